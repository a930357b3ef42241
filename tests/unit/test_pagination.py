"""``shared.pagination``: page sizes and opaque, request-bound page tokens (AIP-158)."""

from __future__ import annotations

import pytest

from shared.errors import InvalidArgument
from shared.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
    resolve_page_size,
)


@pytest.mark.parametrize(
    ("asked", "used"),
    [
        (0, DEFAULT_PAGE_SIZE),
        (1, 1),
        (MAX_PAGE_SIZE, MAX_PAGE_SIZE),
        (MAX_PAGE_SIZE + 1, MAX_PAGE_SIZE),
    ],
)
def test_page_sizes_default_and_are_capped(asked: int, used: int) -> None:
    assert resolve_page_size(asked) == used


def test_a_negative_page_size_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as raised:
        resolve_page_size(-1)
    assert [(v.field, v.reason) for v in raised.value.violations] == [("page_size", "NEGATIVE")]


def test_a_token_round_trips_for_the_same_request_only() -> None:
    query = {"parent": "datasets/a/versions/-"}
    token = encode_page_token(query, [42, "datasets/a/versions/v1/splits/s"])
    assert "=" not in token
    assert decode_page_token(token, query) == [42, "datasets/a/versions/v1/splits/s"]
    assert decode_page_token("", query) is None
    with pytest.raises(InvalidArgument) as raised:
        decode_page_token(token, {"parent": "datasets/b/versions/-"})
    assert raised.value.violations[0].reason == "PAGE_TOKEN_MISMATCH"


@pytest.mark.parametrize("token", ["not base64!", "bm90IGpzb24", "eyJhIjogMX0", "W10"])
def test_tokens_we_did_not_issue_are_invalid(token: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        decode_page_token(token, {"parent": "p"})
    assert [(v.field, v.reason) for v in raised.value.violations] == [
        ("page_token", "INVALID_PAGE_TOKEN")
    ]
