"""``python -m services.evaluator.entrypoints.main``: run the evaluator service."""

from __future__ import annotations

from services.evaluator.bootstrap import SPEC
from services.evaluator.settings import EvaluatorSettings
from shared.runtime import run_service


def main() -> None:
    run_service(SPEC, EvaluatorSettings)


if __name__ == "__main__":
    main()
