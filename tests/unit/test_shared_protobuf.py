"""shared.protobuf: domain enums, datetimes and seconds ⇄ the contracts' proto values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import FieldViolation, InvalidArgument
from shared.events.consumer import FailureKind, classify_failure
from shared.protobuf import (
    UNKNOWN_ENUM_VALUE,
    UnknownEnumNumber,
    datetime_from_timestamp,
    duration_from_seconds,
    enum_field_from_proto,
    enum_from_proto,
    enum_to_proto,
    seconds_from_duration,
    set_timestamp,
    timestamp_from_datetime,
)
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.splitter.v1 import resources_pb2 as splitter_pb2
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2


class Method(StrEnum):
    """Mirrors ``common.v1.AdapterMethod`` the way a service's domain enum does."""

    LORA = "LORA"
    DORA = "DORA"
    RSLORA = "RSLORA"


class OlderMethod(StrEnum):
    """A domain enum that lags behind the contract: it has no RSLORA."""

    LORA = "LORA"
    DORA = "DORA"


class MisspelledMethod(StrEnum):
    """A domain enum that names a value the contract does not have."""

    QLORA = "QLORA"


# -- enums ----------------------------------------------------------------------------------------


def test_enum_to_proto_prefixes_the_domain_value() -> None:
    assert (
        enum_to_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", Method.DORA)
        == common_pb2.ADAPTER_METHOD_DORA
    )
    assert (
        enum_to_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", Method.RSLORA)
        == common_pb2.ADAPTER_METHOD_RSLORA
    )


def test_enum_to_proto_of_none_is_unspecified() -> None:
    assert enum_to_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", None) == 0
    assert common_pb2.AdapterMethod.Name(0) == "ADAPTER_METHOD_UNSPECIFIED"


def test_enum_to_proto_refuses_a_value_the_contract_lacks() -> None:
    with pytest.raises(ValueError, match="ADAPTER_METHOD_QLORA"):
        enum_to_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", MisspelledMethod.QLORA)


@pytest.mark.parametrize("value", list(Method))
def test_enum_round_trip(value: Method) -> None:
    number = enum_to_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", value)
    assert number != 0
    assert enum_from_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", number, Method) is value


def test_enum_from_proto_of_unspecified_is_none() -> None:
    assert enum_from_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", 0, Method) is None


def test_enum_from_proto_raises_for_a_number_the_contract_does_not_define() -> None:
    with pytest.raises(ValueError, match="99 is not a AdapterMethod value"):
        enum_from_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", 99, Method)


def test_enum_from_proto_raises_for_a_name_the_domain_lacks() -> None:
    with pytest.raises(ValueError, match="RSLORA"):
        enum_from_proto(
            common_pb2.AdapterMethod,
            "ADAPTER_METHOD",
            common_pb2.ADAPTER_METHOD_RSLORA,
            OlderMethod,
        )


@pytest.mark.parametrize(
    ("number", "domain"), [(99, Method), (common_pb2.ADAPTER_METHOD_RSLORA, OlderMethod)]
)
def test_an_unknown_enum_number_in_an_event_is_dead_lettered_at_once(
    number: int, domain: type[StrEnum]
) -> None:
    # A converter turning an event into domain values meets it before any handler runs: the
    # event is malformed, so retrying it cannot help.
    with pytest.raises(UnknownEnumNumber) as raised:
        enum_from_proto(common_pb2.AdapterMethod, "ADAPTER_METHOD", number, domain)
    assert isinstance(raised.value, InvalidArgument)
    assert classify_failure(raised.value) is FailureKind.PERMANENT


def test_enum_field_from_proto_reads_a_known_number_without_violations() -> None:
    violations: list[FieldViolation] = []
    value = enum_field_from_proto(
        common_pb2.AdapterMethod,
        "ADAPTER_METHOD",
        common_pb2.ADAPTER_METHOD_LORA,
        Method,
        field="adapter_spec.method",
        violations=violations,
    )
    assert value is Method.LORA
    assert violations == []


def test_enum_field_from_proto_of_unspecified_is_none_without_violations() -> None:
    violations: list[FieldViolation] = []
    value = enum_field_from_proto(
        common_pb2.AdapterMethod,
        "ADAPTER_METHOD",
        0,
        Method,
        field="adapter_spec.method",
        violations=violations,
    )
    assert value is None
    assert violations == []


@pytest.mark.parametrize(
    ("number", "domain"),
    [(99, Method), (common_pb2.ADAPTER_METHOD_RSLORA, OlderMethod)],
    ids=["unknown-to-the-contract", "unknown-to-the-domain"],
)
def test_enum_field_from_proto_records_an_unknown_number_as_a_field_violation(
    number: int, domain: type[StrEnum]
) -> None:
    violations = [FieldViolation("earlier", "already there", "OTHER")]
    value = enum_field_from_proto(
        common_pb2.AdapterMethod,
        "ADAPTER_METHOD",
        number,
        domain,
        field="training_job.adapter_spec.method",
        violations=violations,
    )
    assert value is None
    assert len(violations) == 2, "appends, keeping what the caller collected before"
    violation = violations[1]
    assert violation.field == "training_job.adapter_spec.method"
    assert violation.reason == UNKNOWN_ENUM_VALUE == "UNKNOWN_ENUM_VALUE"
    assert violation.description == f"{number} is not a known AdapterMethod value"


# -- timestamps -----------------------------------------------------------------------------------


def test_timestamp_of_none_is_none_and_leaves_the_field_unset() -> None:
    assert timestamp_from_datetime(None) is None
    policy = splitter_pb2.SplitPolicy(update_time=timestamp_from_datetime(None))
    assert not policy.HasField("update_time")
    set_timestamp(policy.update_time, None)
    assert not policy.HasField("update_time")
    assert datetime_from_timestamp(policy, "update_time") is None


def test_an_aware_datetime_is_stored_as_its_utc_instant() -> None:
    plus_two = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    stamp = timestamp_from_datetime(plus_two)
    assert stamp.ToJsonString() == "2025-03-01T10:30:15.123456Z"
    policy = splitter_pb2.SplitPolicy(update_time=stamp)
    back = datetime_from_timestamp(policy, "update_time")
    assert back == plus_two
    assert back is not None
    assert back.tzinfo is UTC


def test_a_naive_datetime_is_read_as_utc() -> None:
    naive = datetime(2025, 3, 1, 12, 30, 15)
    stamp = timestamp_from_datetime(naive)
    assert stamp.ToJsonString() == "2025-03-01T12:30:15Z"
    policy = splitter_pb2.SplitPolicy()
    set_timestamp(policy.update_time, naive)
    assert datetime_from_timestamp(policy, "update_time") == naive.replace(tzinfo=UTC)


def test_a_set_epoch_is_not_mistaken_for_unset() -> None:
    policy = splitter_pb2.SplitPolicy()
    set_timestamp(policy.update_time, datetime(1970, 1, 1, tzinfo=UTC))
    assert policy.update_time.seconds == 0
    assert policy.update_time.nanos == 0
    assert datetime_from_timestamp(policy, "update_time") == datetime(1970, 1, 1, tzinfo=UTC)


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(9999, 12, 30),
        timezones=st.just(UTC),
    )
)
def test_timestamp_round_trip(value: datetime) -> None:
    policy = splitter_pb2.SplitPolicy()
    set_timestamp(policy.update_time, value)
    assert policy.update_time == timestamp_from_datetime(value)
    assert datetime_from_timestamp(policy, "update_time") == value


# -- durations ------------------------------------------------------------------------------------


def test_duration_from_seconds_keeps_nanoseconds_and_truncates_below() -> None:
    assert duration_from_seconds(90.5).ToJsonString() == "90.500s"
    assert duration_from_seconds(0.000000001).ToNanoseconds() == 1
    assert duration_from_seconds(0.0000000004).ToNanoseconds() == 0


def test_seconds_from_an_unset_duration_is_none_and_a_zero_one_is_zero() -> None:
    rules = trainer_pb2.StoppingRules()
    assert seconds_from_duration(rules, "max_duration") is None
    rules.max_duration.CopyFrom(duration_from_seconds(0))
    assert seconds_from_duration(rules, "max_duration") == 0.0


@given(st.integers(min_value=0, max_value=10**9).map(lambda ms: ms / 1000))
def test_duration_round_trip(seconds: float) -> None:
    rules = trainer_pb2.StoppingRules(max_duration=duration_from_seconds(seconds))
    back = seconds_from_duration(rules, "max_duration")
    # float seconds are truncated to whole nanoseconds (16.531 comes back as 16.530999999)
    assert back == pytest.approx(seconds, abs=2e-9)
