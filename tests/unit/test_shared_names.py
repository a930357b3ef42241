"""shared.names: one resource-name pattern type and one id rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import names
from shared.errors import InvalidArgument
from shared.names import ResourcePattern

ids = st.from_regex(names.RESOURCE_ID, fullmatch=True)


@given(dataset=ids, version=ids)
def test_a_formatted_name_parses_back_to_its_ids(dataset: str, version: str) -> None:
    name = names.DATASET_VERSION.format(dataset=dataset, version=version)

    assert name == f"datasets/{dataset}/versions/{version}"
    assert names.DATASET_VERSION.parse(name) == {"dataset": dataset, "version": version}
    assert names.DATASET_VERSION.ids(name) == (dataset, version)


@given(value=st.text(max_size=80))
def test_parse_accepts_exactly_what_format_writes(value: str) -> None:
    try:
        parsed = names.SPLIT.parse(value, field="split")
    except InvalidArgument as error:
        (violation,) = error.violations
        assert (violation.field, violation.reason) == ("split", "INVALID_NAME")
        assert names.SPLIT.template in violation.description
    else:
        assert names.SPLIT.format(**parsed) == value


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "datasets/",
        "datasets/reviews/",
        "datasets/Reviews",
        "datasets/1st",
        "datasets/a_b",
        "datasets/trailing-",
        "datasets/" + "x" * 64,
        "datasets/reviews/versions/v-1",
        "models/reviews",
        " datasets/reviews",
        "datasets/reviews\n",
    ],
)
def test_bad_names_are_invalid_argument_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        names.DATASET.parse(bad, field="request.dataset")

    (violation,) = raised.value.violations
    assert violation.field == "request.dataset"
    assert violation.reason == "INVALID_NAME"
    assert violation.description == "expected datasets/{dataset}"
    assert not names.DATASET.matches(bad)
    assert names.DATASET.violations(bad, field="f")[0].field == "f"


def test_the_ids_the_services_assign_follow_the_rule() -> None:
    # version, split, report, evaluation and trainer checkpoint ids the services generate
    for assigned in ("v-0123456789abcdef0123", "s-9f", "r-00ff", "e-abc123", "step-100"):
        assert names.is_resource_id(assigned)
    assert names.MODEL_CHECKPOINT.ids("models/m/checkpoints/job-1.step-10") == (
        "m",
        "job-1.step-10",
    )
    with pytest.raises(InvalidArgument):
        names.MODEL_CHECKPOINT.parse("models/m/checkpoints/job-1..step-10")


def test_a_wildcard_is_accepted_only_where_the_pattern_allows_it() -> None:
    assert names.SPLIT_LIST_PARENT.ids("datasets/d/versions/-") == ("d", "-")
    assert names.ANY_MODEL_ALIAS.ids("models/m/aliases/-") == ("m", "-")
    with pytest.raises(InvalidArgument):
        names.DATASET_VERSION.parse("datasets/d/versions/-")
    with pytest.raises(InvalidArgument):
        names.MODEL_ALIAS.parse("models/m/aliases/-")


def test_check_resource_id_names_the_field_and_reason() -> None:
    assert names.check_resource_id("reviews", field="dataset_id") == "reviews"
    with pytest.raises(InvalidArgument) as raised:
        names.check_resource_id("Reviews", field="dataset_id")
    (violation,) = raised.value.violations
    assert (violation.field, violation.reason) == ("dataset_id", "INVALID_ID")


def test_format_needs_every_id_and_no_other() -> None:
    with pytest.raises(ValueError, match="needs ids"):
        names.DATASET_VERSION.format(dataset="d")
    with pytest.raises(ValueError, match="needs ids"):
        names.DATASET.format(dataset="d", version="v")


def test_templates_are_checked_when_declared() -> None:
    with pytest.raises(ValueError, match="bad segment"):
        ResourcePattern("datasets/{dataset}/")
    with pytest.raises(ValueError, match="repeats"):
        ResourcePattern("a/{x}/b/{x}")
    with pytest.raises(ValueError, match="unknown variables"):
        ResourcePattern("a/{x}", wildcards={"y": "-"})


def test_evaluations_stored_before_the_id_rule_stay_readable() -> None:
    assert names.EVALUATION.parse("evaluations/0123456789abcdef0123") == {
        "evaluation": "0123456789abcdef0123"
    }
    assert names.EVALUATION.parse("evaluations/e-0123456789abcdef0123")
    with pytest.raises(InvalidArgument):
        names.EVALUATION.parse("evaluations/0123")  # only the exact old form
    with pytest.raises(InvalidArgument):
        names.MODEL.parse("models/0123456789abcdef0123")  # and only for evaluations
