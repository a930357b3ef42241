"""``python -m services.dataset.entrypoints.main``: run the dataset service."""

from __future__ import annotations

from services.dataset.bootstrap import SPEC
from services.dataset.settings import DatasetSettings
from shared.runtime import run_service


def main() -> None:
    run_service(SPEC, DatasetSettings)


if __name__ == "__main__":
    main()
