"""CommonSettings and ServiceSettings: TUNELINE_* environment, defaults, per-service prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from services.registry.bootstrap import live_quality_rule
from services.registry.domain.live_quality import LiveQualityRule
from services.registry.settings import RegistrySettings
from shared.settings import CommonSettings, ServiceSettings


class _TestSettings(ServiceSettings):
    service_name = "test"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_TEST_")


class _OtherSettings(ServiceSettings):
    service_name = "other"
    model_config = SettingsConfigDict(env_prefix="TUNELINE_OTHER_")


_ENV_NAMES = (
    "KAFKA_BOOTSTRAP",
    "DATA_DIR",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "CONSUMER_MAX_ATTEMPTS",
    "OUTBOX_POLL_SECONDS",
    "GRPC_SHUTDOWN_GRACE_SECONDS",
    "GRPC_HOST",
    "GRPC_PORT",
    "METRICS_PORT",
    "DATABASE_URL",
    "ARTIFACT_ROOT",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TUNELINE_* (or bare) variable from the outer environment leaks into a test."""
    for name in _ENV_NAMES:
        for prefix in ("", "TUNELINE_", "TUNELINE_TEST_", "TUNELINE_OTHER_"):
            monkeypatch.delenv(prefix + name, raising=False)


def test_common_defaults() -> None:
    common = CommonSettings()
    assert common.kafka_bootstrap == "127.0.0.1:19092"
    assert common.data_dir == Path(".tuneline/data")
    assert common.log_level == "INFO"
    assert common.log_format == "json"
    assert common.consumer_max_attempts == 3
    assert common.outbox_poll_seconds == pytest.approx(0.2)
    assert common.grpc_shutdown_grace_seconds == pytest.approx(10.0)


def test_common_reads_tuneline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELINE_KAFKA_BOOTSTRAP", "broker-a:9092,broker-b:9092")
    monkeypatch.setenv("TUNELINE_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TUNELINE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("TUNELINE_LOG_FORMAT", "console")
    monkeypatch.setenv("TUNELINE_CONSUMER_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("TUNELINE_OUTBOX_POLL_SECONDS", "0.05")
    monkeypatch.setenv("TUNELINE_GRPC_SHUTDOWN_GRACE_SECONDS", "0")

    common = CommonSettings()

    assert common.kafka_bootstrap == "broker-a:9092,broker-b:9092"
    assert common.data_dir == tmp_path / "state"
    assert common.log_level == "DEBUG"
    assert common.log_format == "console"
    assert common.consumer_max_attempts == 7
    assert common.outbox_poll_seconds == pytest.approx(0.05)
    assert common.grpc_shutdown_grace_seconds == 0.0


def test_common_ignores_unprefixed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "wrong:1")
    monkeypatch.setenv("LOG_LEVEL", "ERROR")
    common = CommonSettings()
    assert common.kafka_bootstrap == "127.0.0.1:19092"
    assert common.log_level == "INFO"


def test_common_is_frozen() -> None:
    common = CommonSettings()
    with pytest.raises(ValidationError):
        common.log_level = "DEBUG"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TUNELINE_CONSUMER_MAX_ATTEMPTS", "-1"),
        ("TUNELINE_CONSUMER_MAX_ATTEMPTS", "0"),
        ("TUNELINE_CONSUMER_MAX_ATTEMPTS", "three"),
        ("TUNELINE_OUTBOX_POLL_SECONDS", "0"),
        ("TUNELINE_OUTBOX_POLL_SECONDS", "-0.5"),
        ("TUNELINE_GRPC_SHUTDOWN_GRACE_SECONDS", "-1"),
        ("TUNELINE_LOG_FORMAT", "xml"),
    ],
)
def test_common_rejects_bad_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        CommonSettings()
    field = name.removeprefix("TUNELINE_").lower()
    assert any(error["loc"] == (field,) for error in info.value.errors())


def test_service_defaults() -> None:
    settings = _TestSettings()
    assert settings.grpc_host == "127.0.0.1"
    assert settings.grpc_port == 0
    assert settings.metrics_port == 0
    assert settings.database_url is None
    assert settings.artifact_root is None
    # The subclass keeps the base's config besides its own prefix.
    assert settings.model_config["frozen"] is True
    assert settings.model_config["extra"] == "ignore"


def test_service_subclass_reads_its_own_prefix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TUNELINE_TEST_GRPC_HOST", "0.0.0.0")
    monkeypatch.setenv("TUNELINE_TEST_GRPC_PORT", "50051")
    monkeypatch.setenv("TUNELINE_TEST_METRICS_PORT", "9100")
    monkeypatch.setenv("TUNELINE_TEST_DATABASE_URL", "postgresql://db/test")
    monkeypatch.setenv("TUNELINE_TEST_ARTIFACT_ROOT", str(tmp_path / "blobs"))
    # Another service's variables and the common prefix must not be picked up.
    monkeypatch.setenv("TUNELINE_OTHER_GRPC_PORT", "60000")
    monkeypatch.setenv("TUNELINE_GRPC_PORT", "1234")

    settings = _TestSettings()
    other = _OtherSettings()

    assert settings.grpc_host == "0.0.0.0"
    assert settings.grpc_port == 50051
    assert settings.metrics_port == 9100
    assert settings.database_url == "postgresql://db/test"
    assert settings.artifact_root == tmp_path / "blobs"
    assert other.grpc_port == 60000
    assert other.grpc_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TUNELINE_TEST_GRPC_PORT", "-1"),
        ("TUNELINE_TEST_GRPC_PORT", "65536"),
        ("TUNELINE_TEST_METRICS_PORT", "70000"),
        ("TUNELINE_TEST_GRPC_PORT", "http"),
    ],
)
def test_service_rejects_bad_ports(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        _TestSettings()


def test_service_base_class_reads_no_unprefixed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bare ``DATABASE_URL``/``GRPC_PORT`` belong to other software, never to Tuneline.

    ``ServiceSettings`` has no ``env_prefix``, so the base class, and any subclass that forgets
    to set one, reads the unprefixed names (``DATABASE_URL`` is a very common variable).
    """
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone-elses-db/prod")
    monkeypatch.setenv("GRPC_PORT", "4242")
    settings = ServiceSettings()
    assert settings.database_url is None
    assert settings.grpc_port == 0


def test_resolved_defaults_live_under_data_dir(tmp_path: Path) -> None:
    common = CommonSettings(data_dir=tmp_path / "data")
    settings = _TestSettings()

    url = settings.resolved_database_url(common)
    root = settings.resolved_artifact_root(common)

    db_path = (tmp_path / "data" / "test" / "test.db").resolve()
    assert url == f"sqlite:///{db_path}"
    assert root == (tmp_path / "data" / "test" / "artifacts").resolve()
    assert root.is_absolute()
    # Resolving does not create anything; the engine and the store do that.
    assert not (tmp_path / "data").exists()


def test_resolved_defaults_differ_per_service(tmp_path: Path) -> None:
    common = CommonSettings(data_dir=tmp_path)
    assert _TestSettings().resolved_database_url(common) != _OtherSettings().resolved_database_url(
        common
    )
    assert _TestSettings().resolved_artifact_root(
        common
    ) != _OtherSettings().resolved_artifact_root(common)


def test_relative_data_dir_is_resolved_against_cwd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    common = CommonSettings()  # data_dir defaults to the relative .tuneline/data
    expected = (tmp_path / ".tuneline" / "data" / "test").resolve()
    assert _TestSettings().resolved_database_url(common) == f"sqlite:///{expected / 'test.db'}"
    assert _TestSettings().resolved_artifact_root(common) == expected / "artifacts"


def test_explicit_values_win_over_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELINE_TEST_DATABASE_URL", "sqlite:////elsewhere/x.db")
    monkeypatch.setenv("TUNELINE_TEST_ARTIFACT_ROOT", str(tmp_path / "a" / ".." / "b"))
    common = CommonSettings(data_dir=tmp_path / "data")
    settings = _TestSettings()
    assert settings.resolved_database_url(common) == "sqlite:////elsewhere/x.db"
    assert settings.resolved_artifact_root(common) == (tmp_path / "b").resolve()


def test_registry_live_quality_rule_comes_from_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert live_quality_rule(RegistrySettings()) == LiveQualityRule()
    monkeypatch.setenv("TUNELINE_REGISTRY_LIVE_QUALITY_ALPHA", "0.001")
    monkeypatch.setenv("TUNELINE_REGISTRY_LIVE_QUALITY_MIN_TRIALS", "250")
    monkeypatch.setenv("TUNELINE_REGISTRY_LIVE_QUALITY_PRIOR_WEIGHT", "5")
    assert live_quality_rule(RegistrySettings()) == LiveQualityRule(
        alpha=0.001, min_trials=250, prior_weight=5.0
    )
    monkeypatch.setenv("TUNELINE_REGISTRY_LIVE_QUALITY_ALPHA", "1.5")
    with pytest.raises(ValidationError):
        RegistrySettings()
