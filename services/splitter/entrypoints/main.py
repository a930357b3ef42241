"""``python -m services.splitter.entrypoints.main``: run the splitter service."""

from __future__ import annotations

from services.splitter.bootstrap import SPEC
from services.splitter.settings import SplitterSettings
from shared.runtime import run_service


def main() -> None:
    run_service(SPEC, SplitterSettings)


if __name__ == "__main__":
    main()
