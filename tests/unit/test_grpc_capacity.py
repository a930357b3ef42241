"""Stream admission: the server, method and client caps, and slots coming back on release."""

from __future__ import annotations

import pytest

from shared.errors import ResourceExhausted
from shared.grpc.capacity import StreamLimits, _StreamSlots

LIMITS = StreamLimits(
    max_streams=3, max_streams_per_method=2, max_streams_per_client=2, unary_workers=4
)


def test_workers_cover_every_stream_slot_plus_the_unary_reserve():
    assert LIMITS.worker_threads == 3 + 4
    assert LIMITS.max_concurrent_rpcs > LIMITS.worker_threads


@pytest.mark.parametrize(
    ("held", "asked", "cap"),
    [
        ([("m/A", "c1"), ("m/A", "c2")], ("m/A", "c3"), "method"),
        ([("m/A", "c1"), ("m/B", "c1")], ("m/C", "c1"), "client"),
        ([("m/A", "c1"), ("m/B", "c2"), ("m/C", "c3")], ("m/D", "c4"), "server"),
    ],
)
def test_a_stream_beyond_a_cap_is_refused_with_the_cap_named(held, asked, cap):
    slots = _StreamSlots(LIMITS)
    for method, client in held:
        slots.acquire(method, client)
    with pytest.raises(ResourceExhausted) as refused:
        slots.acquire(*asked)
    assert refused.value.metadata["cap"] == cap
    assert refused.value.metadata["method"] == asked[0]
    slots.release(*held[-1])  # a slot coming back admits the stream
    slots.acquire(*asked)
