"""``tuneline dev protos``: regenerate the contract stubs, or check that they are current."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from tuneline.devtools import protos

# The repository root: this file is ``<root>/tuneline/cli/dev_protos.py``. Generation is a
# developer task run from a checkout, so the sources are found next to the package, not
# installed with it.
REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"

app = typer.Typer(
    help="Python stubs of the protobuf contracts in proto/: generate them, or check for drift.",
    no_args_is_help=True,
)


@app.command()
def generate() -> None:
    """Regenerate tuneline/<service>/v1/ from proto/ and delete stubs no longer generated."""
    written = protos.generate(PROTO_ROOT, REPO_ROOT)
    for path in protos.stale_files(REPO_ROOT, written):
        path.unlink()
        typer.echo(f"removed stale {path.relative_to(REPO_ROOT)}")
    typer.echo(f"wrote {len(written)} files from {PROTO_ROOT.relative_to(REPO_ROOT)}/")


@app.command()
def check() -> None:
    """Exit 1, listing the files, when the committed stubs differ from freshly generated ones."""
    with tempfile.TemporaryDirectory(prefix="tuneline-protos-") as scratch:
        fresh_root = Path(scratch)
        protos.generate(PROTO_ROOT, fresh_root)
        differences = protos.compare_trees(fresh_root, REPO_ROOT)
    if differences:
        for line in differences:
            typer.echo(line, err=True)
        typer.echo("stubs are out of date: run `tuneline dev protos generate`", err=True)
        raise typer.Exit(code=1)
    typer.echo("stubs are current")
