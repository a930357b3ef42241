"""``python -m services.trainer.entrypoints.main``: run the trainer service."""

from __future__ import annotations

from services.trainer.bootstrap import SPEC
from services.trainer.settings import TrainerSettings
from shared.runtime import run_service


def main() -> None:
    run_service(SPEC, TrainerSettings)


if __name__ == "__main__":
    main()
