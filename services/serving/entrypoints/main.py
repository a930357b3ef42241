"""``python -m services.serving.entrypoints.main``: run the serving service."""

from __future__ import annotations

from services.serving.bootstrap import SPEC
from services.serving.settings import ServingSettings
from shared.runtime import run_service


def main() -> None:
    run_service(SPEC, ServingSettings)


if __name__ == "__main__":
    main()
