"""``python -m services.registry.entrypoints.main``: run the registry service."""

from __future__ import annotations

from services.registry.bootstrap import SPEC
from services.registry.settings import RegistrySettings
from shared.runtime import run_service


def main() -> None:
    run_service(SPEC, RegistrySettings)


if __name__ == "__main__":
    main()
