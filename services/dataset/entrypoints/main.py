"""``python -m services.dataset.entrypoints.main``: run the dataset service."""

from __future__ import annotations


def main() -> None:
    # Imported here, not at module level: validation worker processes are spawned, and a
    # spawned child imports the parent's main module. Keeping this module bare keeps each
    # worker down to what the row rules need (no gRPC, Kafka or SQLAlchemy in it).
    from services.dataset.bootstrap import SPEC  # noqa: PLC0415
    from services.dataset.settings import DatasetSettings  # noqa: PLC0415
    from shared.runtime import run_service  # noqa: PLC0415

    run_service(SPEC, DatasetSettings)


if __name__ == "__main__":
    main()
