"""``tuneline splits``: create, show and list splits; read and set a dataset's split policy."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from tuneline.cli.endpoints import target
from tuneline.cli.output import console, print_message, reported_errors
from tuneline.client.dataset import dataset_name
from tuneline.client.splitter import SplitterClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.splitter.v1 import resources_pb2

app = typer.Typer(
    help="Splits: create, show, list; and each dataset's split policy.", no_args_is_help=True
)
policy_app = typer.Typer(
    help="A dataset's split policy: how its new versions are split automatically.",
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")


class Strategy(StrEnum):
    """The strategy names the CLI accepts."""

    hash = "hash"
    stratified = "stratified"


_STRATEGIES = {
    Strategy.hash: resources_pb2.SPLIT_STRATEGY_HASH,
    Strategy.stratified: resources_pb2.SPLIT_STRATEGY_STRATIFIED,
}

StrategyOpt = Annotated[
    Strategy | None,
    typer.Option("--strategy", help="hash (append-stable, the default) or stratified."),
]
TrainOpt = Annotated[
    float | None, typer.Option("--train", help="Fraction of rows for training (default 0.8).")
]
ValidationOpt = Annotated[
    float | None,
    typer.Option("--validation", help="Fraction of rows for validation (default 0.2)."),
]
TestOpt = Annotated[
    float | None, typer.Option("--test", help="Fraction of rows for a held-out test part.")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed (default 0).")]


def _client() -> SplitterClient:
    return SplitterClient(target("splitter"))


def _spec(
    strategy: Strategy | None,
    train: float | None,
    validation: float | None,
    test: float | None,
    seed: int | None,
) -> resources_pb2.SplitSpec | None:
    """The spec the options describe; ``None`` when no option was given (use the policy)."""
    if strategy is None and train is None and validation is None and test is None and seed is None:
        return None
    spec = resources_pb2.SplitSpec(seed=seed or 0)
    if strategy is not None:
        spec.strategy = _STRATEGIES[strategy]
    if train is not None or validation is not None or test is not None:
        # ratios are one field: naming some sets all three; a missing train or validation
        # ratio is the complement of the others (rounded, so 1 - 0.8 is 0.2, not 0.19999…)
        test_ratio = test or 0.0
        if train is None:
            train = round(1.0 - validation - test_ratio, 12) if validation is not None else 0.8
        if validation is None:
            validation = round(1.0 - train - test_ratio, 12)
        spec.ratios.CopyFrom(
            resources_pb2.SplitRatios(train=train, validation=validation, test=test_ratio)
        )
    return spec


def _parts_summary(split: resources_pb2.Split) -> str:
    return ", ".join(
        f"{common_pb2.SplitPart.Name(p.part).removeprefix('SPLIT_PART_').lower()} {p.row_count}"
        for p in split.parts
    )


@app.command()
def create(
    dataset_version: Annotated[
        str, typer.Argument(help="The version to split: datasets/{dataset}/versions/{version}.")
    ],
    strategy: StrategyOpt = None,
    train: TrainOpt = None,
    validation: ValidationOpt = None,
    test: TestOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Split a dataset version; without options, by its dataset's split policy.

    Idempotent: the same version and spec return the existing split.
    """
    spec = _spec(strategy, train, validation, test, seed)
    with reported_errors(), _client() as client:
        split, created = client.create_split(dataset_version, spec)
    console.print(
        f"{'created' if created else 'already existed'}: [bold]{split.name}[/bold] "
        f"({_parts_summary(split)})"
    )
    print_message(split)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="datasets/{dataset}/versions/{v}/splits/{split}")],
) -> None:
    """Show one split: spec, manifest, per-part counts and label distributions."""
    with reported_errors(), _client() as client:
        print_message(client.get_split(name))


@app.command("list")
def list_splits(
    parent: Annotated[
        str,
        typer.Argument(
            help="datasets/{dataset}/versions/{version}, or datasets/{dataset}/versions/- "
            "for every version of the dataset."
        ),
    ],
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 50,
) -> None:
    """List splits, newest first."""
    table = Table("split", "strategy", "seed", "parts (rows)", "created")
    with reported_errors(), _client() as client:
        for index, split in enumerate(client.list_splits(parent, page_size=min(limit, 100))):
            if index == limit:
                break
            table.add_row(
                split.name,
                resources_pb2.SplitStrategy.Name(split.spec.strategy).removeprefix(
                    "SPLIT_STRATEGY_"
                ),
                str(split.spec.seed),
                _parts_summary(split),
                split.create_time.ToDatetime().isoformat(timespec="seconds") + "Z",
            )
    console.print(table)


@policy_app.command("get")
def get_policy(
    dataset: Annotated[str, typer.Argument(help="The dataset: reviews or datasets/reviews.")],
) -> None:
    """Show a dataset's split policy (the defaults when none was set)."""
    with reported_errors(), _client() as client:
        print_message(client.get_split_policy(dataset_name(dataset)))


@policy_app.command("set")
def set_policy(
    dataset: Annotated[str, typer.Argument(help="The dataset: reviews or datasets/reviews.")],
    strategy: StrategyOpt = None,
    train: TrainOpt = None,
    validation: ValidationOpt = None,
    test: TestOpt = None,
    seed: SeedOpt = None,
    auto_split: Annotated[
        bool,
        typer.Option("--auto-split/--no-auto-split", help="Split every new version automatically."),
    ] = True,
) -> None:
    """Set (replace) a dataset's split policy; it applies to versions that arrive afterwards."""
    spec = _spec(strategy, train, validation, test, seed)
    with reported_errors(), _client() as client:
        policy = client.set_split_policy(
            dataset_name(dataset), spec, auto_split_disabled=not auto_split
        )
    print_message(policy)
