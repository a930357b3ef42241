"""``tuneline datasets``: create, push (upload with progress), show, list, report, audit."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from shared.names import DATASET, VALIDATION_REPORT
from tuneline.cli.choices import TaskChoice, task_label
from tuneline.cli.endpoints import target
from tuneline.cli.output import console, err_console, print_message, reported_errors
from tuneline.cli.ownership import ContactOption, OwnerOption, RunbookOption, owner_option
from tuneline.client.dataset import DatasetClient, dataset_name
from tuneline.client.errors import InvalidArgumentError
from tuneline.client.names import id_of
from tuneline.dataset.v1 import resources_pb2

app = typer.Typer(
    help="Datasets: create, push (upload with progress), show, list, report, audit.",
    no_args_is_help=True,
)


class OutcomeChoice(StrEnum):
    accepted = "accepted"
    rejected = "rejected"


class AuditActionChoice(StrEnum):
    report = "report"
    warn = "warn"
    block = "block"


def _client() -> DatasetClient:
    return DatasetClient(target("dataset"))


def _severities(specs: list[str]) -> dict[str, str]:
    """``duplicate_row=error`` → ``{"duplicate_row": "error"}``."""
    severities = {}
    for spec in specs:
        rule, _, severity = spec.partition("=")
        if not rule or severity.lower() not in ("error", "warning", "info"):
            raise typer.BadParameter(f"{spec!r}: use RULE=error|warning|info")
        severities[rule.strip()] = severity.lower()
    return severities


def _enum_name(enum_type: object, value: int, prefix: str) -> str:
    return enum_type.Name(value).removeprefix(prefix).lower()  # type: ignore[attr-defined]


@app.command()
def create(
    dataset_id: Annotated[str, typer.Argument(help="The dataset id, e.g. reviews.")],
    task: Annotated[TaskChoice, typer.Option(help="The task every version's rows are for.")],
    label: Annotated[
        list[str] | None,
        typer.Option(help="An allowed label; repeatable (default: derive from version one)."),
    ] = None,
    max_text_length: Annotated[int, typer.Option(help="Longest text, code points (0: 32768).")] = 0,
    min_rows_per_class: Annotated[int, typer.Option(help="Fewest rows per class (0: 10).")] = 0,
    max_imbalance_ratio: Annotated[
        float, typer.Option(help="Largest / smallest class (0: 10).")
    ] = 0.0,
    severity: Annotated[
        list[str] | None,
        typer.Option(help="Severity override RULE=error|warning|info; repeatable."),
    ] = None,
    label_audit_action: Annotated[
        AuditActionChoice | None,
        typer.Option(
            help="What the label audit does above --max-label-noise-rate estimated noise "
            "(default: block)."
        ),
    ] = None,
    max_label_noise_rate: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Largest estimated label noise rate accepted (0: 0.25)."
        ),
    ] = 0.0,
    max_label_churn: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Largest share of the rows shared with the parent that may change label "
            "before label_churn takes its severity (0: 0.2).",
        ),
    ] = 0.0,
    min_shared_rows_for_churn: Annotated[
        int,
        typer.Option(min=0, help="Fewest shared rows for --max-label-churn to apply (0: 50)."),
    ] = 0,
    display_name: Annotated[str, typer.Option(help="Human-readable name.")] = "",
    description: Annotated[str, typer.Option(help="Free-text description.")] = "",
    owner_team: OwnerOption = "",
    owner_contact: ContactOption = "",
    runbook: RunbookOption = "",
) -> None:
    """Create a dataset with its task type, validation and audit policy, owner and runbook."""
    with reported_errors(), _client() as client:
        created = client.create_dataset(
            dataset_id,
            task.value,
            label_set=label or (),
            max_text_length=max_text_length,
            min_rows_per_class=min_rows_per_class,
            max_imbalance_ratio=max_imbalance_ratio,
            rule_severities=_severities(severity or []),
            display_name=display_name,
            description=description,
            owner=owner_option(owner_team, owner_contact, runbook),
            label_audit_action=label_audit_action.value if label_audit_action else "",
            max_label_noise_rate=max_label_noise_rate,
            max_label_churn=max_label_churn,
            min_shared_rows_for_churn=min_shared_rows_for_churn,
        )
    err_console.print(f"[green]created[/green] {created.name}")
    print_message(created)


class _RowsPerSecond(ProgressColumn):
    """Lines sent per second (the rows, for JSONL), from the task's ``rows`` field."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self._started = started

    def render(self, task: Task) -> Text:
        rows = int(task.fields.get("rows", 0))
        elapsed = max(time.monotonic() - self._started, 1e-6)
        return Text(f"{rows:,} rows  {rows / elapsed:,.0f} rows/s", style="progress.data.speed")


@app.command()
def push(
    dataset: Annotated[str, typer.Argument(help="reviews or datasets/reviews")],
    file: Annotated[
        Path, typer.Argument(help="The JSONL file to upload.", exists=True, dir_okay=False)
    ],
    parent: Annotated[
        str, typer.Option(help="The version this one revises: datasets/{d}/versions/{v}.")
    ] = "",
    uploader: Annotated[str, typer.Option(help="Who is uploading, e.g. alice@example.com.")] = "",
    validate_only: Annotated[
        bool, typer.Option("--validate-only", help="Validate and store the report only.")
    ] = False,
    allow_label_churn: Annotated[
        str,
        typer.Option(
            metavar="REASON",
            help="Accept a version that relabels many of its parent's rows, saying why "
            "(kept in the version's lineage).",
        ),
    ] = "",
    chunk_kib: Annotated[int, typer.Option(min=16, max=4096, help="Chunk size in KiB.")] = 1024,
) -> None:
    """Upload a JSONL file as a new version, with a progress bar (bytes/s and rows/s)."""
    size = file.stat().st_size
    started = time.monotonic()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        _RowsPerSecond(started),
        TimeRemainingColumn(),
        console=err_console,
    )
    task_id = progress.add_task(file.name, total=size, rows=0)

    def advance(sent_bytes: int, sent_lines: int) -> None:
        progress.update(task_id, completed=sent_bytes, rows=sent_lines)

    with reported_errors(), _client() as client, progress:
        try:
            response = client.upload_dataset_version(
                dataset_name(dataset),
                file,
                parent_version=parent,
                uploader=uploader,
                validate_only=validate_only,
                label_churn_override=allow_label_churn,
                chunk_bytes=chunk_kib * 1024,
                progress=advance,
            )
        except InvalidArgumentError as error:
            if "report" in error.metadata:
                progress.stop()
                err_console.print(
                    f"[red]rejected[/red]: see [bold]tuneline datasets report "
                    f"{error.metadata['report']}[/bold]"
                )
            raise
    summary = response.report_summary
    seconds = time.monotonic() - started
    if validate_only:
        err_console.print(f"[green]valid[/green] ({seconds:.1f} s); report {response.report}")
    else:
        version = response.dataset_version
        verb = "created" if response.created else "unchanged, already"
        err_console.print(
            f"[green]{verb}[/green] {version.name}: {version.row_count:,} rows, "
            f"{size / max(seconds, 1e-6) / 1e6:.1f} MB/s"
        )
    if summary.warning_count:
        err_console.print(
            f"[yellow]{summary.warning_count} warning(s)[/yellow]: "
            f"{', '.join(summary.warning_rule_ids)}; see tuneline datasets report {response.report}"
        )
    print_message(response)


@app.command()
def show(
    name: Annotated[
        str, typer.Argument(help="A dataset (reviews, datasets/reviews) or a version name.")
    ],
) -> None:
    """Show a dataset, or a version (datasets/{d}/versions/{v})."""
    with reported_errors(), _client() as client:
        if "/versions/" in name:
            print_message(client.get_dataset_version(name))
        else:
            print_message(client.get_dataset(dataset_name(name)))


def _print_table(headers: list[str], rows: list[list[str]], caption: str | None = None) -> None:
    """A table whose first column (the names) is never wrapped or cut; the others give way."""
    width = max([len(headers[0]), *(len(row[0]) for row in rows)])
    table = Table(Column(headers[0], no_wrap=True, min_width=width), *headers[1:], caption=caption)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("list")
def list_command(
    dataset: Annotated[
        str | None, typer.Argument(help="List this dataset's versions instead of datasets.")
    ] = None,
    task: Annotated[TaskChoice | None, typer.Option(help="Only datasets of this task.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 50,
) -> None:
    """List datasets by name, or one dataset's versions, newest first."""
    rows: list[list[str]] = []
    with reported_errors(), _client() as client:
        if dataset is None:
            for item in client.list_datasets(task_type=task.value if task else None):
                if len(rows) == limit:
                    break
                rows.append(
                    [
                        item.name.rsplit("/", 1)[-1],
                        task_label(item.task_type),
                        str(item.version_count),
                        item.latest_version.rsplit("/", 1)[-1] or "-",
                        ", ".join(item.schema_policy.label_set) or "-",
                    ]
                )
            _print_table(["dataset", "task", "versions", "latest", "labels"], rows)
            return
        for version in client.list_dataset_versions(dataset_name(dataset)):
            if len(rows) == limit:
                break
            rows.append(
                [
                    version.name.rsplit("/", 1)[-1],
                    f"{version.row_count:,}",
                    f"{version.byte_count:,}",
                    ", ".join(f"{c.label}={c.count}" for c in version.label_distribution) or "-",
                    str(version.report_summary.warning_count),
                    version.lineage.uploader,
                    version.create_time.ToDatetime().isoformat(timespec="seconds"),
                ]
            )
    _print_table(["version", "rows", "bytes", "labels", "warnings", "uploader", "created"], rows)


@app.command()
def report(
    name: Annotated[
        str,
        typer.Argument(
            help="A report (datasets/{d}/reports/{r}), or a dataset to list its reports."
        ),
    ],
    outcome: Annotated[
        OutcomeChoice | None, typer.Option(help="When listing: only this outcome.")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Reports to list at most.")] = 20,
) -> None:
    """Show a validation report (findings with line numbers), or list a dataset's reports."""
    with reported_errors(), _client() as client:
        if "/reports/" not in name:
            rows: list[list[str]] = []
            for item in client.list_validation_reports(
                dataset_name(name), outcome=outcome.value if outcome else None
            ):
                if len(rows) == limit:
                    break
                rows.append(
                    [
                        item.name.rsplit("/", 1)[-1],
                        _enum_name(
                            resources_pb2.ValidationOutcome,
                            item.summary.outcome,
                            "VALIDATION_OUTCOME_",
                        ),
                        str(item.summary.error_count),
                        str(item.summary.warning_count),
                        item.dataset_version.rsplit("/", 1)[-1] or "-",
                        item.create_time.ToDatetime().isoformat(timespec="seconds"),
                    ]
                )
            _print_table(
                ["report", "outcome", "errors", "warnings", "version", "created"],
                rows,
                caption="details: tuneline datasets report "
                + VALIDATION_REPORT.format(dataset=id_of(DATASET, name), report="REPORT"),
            )
            return
        found = client.get_validation_report(name)
    if json:
        print_message(found)
        return
    outcome_name = _enum_name(
        resources_pb2.ValidationOutcome, found.summary.outcome, "VALIDATION_OUTCOME_"
    )
    console.print(
        f"[bold]{found.name}[/bold]: {outcome_name}, {found.lines_read:,} lines, "
        f"{found.bytes_read:,} bytes{' (validate only)' if found.validate_only else ''}"
    )
    if found.dataset_version:
        console.print(f"version: {found.dataset_version}")
    table = Table("severity", "rule", "field", "count", "lines", "message")
    for finding in found.findings:
        table.add_row(
            _enum_name(resources_pb2.ValidationSeverity, finding.severity, "VALIDATION_SEVERITY_"),
            finding.rule_id,
            finding.field or "-",
            str(finding.count),
            ", ".join(str(n) for n in finding.line_numbers) or "-",
            finding.message,
        )
    console.print(table)


@app.command()
def audit(
    version: Annotated[str, typer.Argument(help="A dataset version, datasets/{d}/versions/{v}.")],
    json: Annotated[
        bool,
        typer.Option("--json", help="Print the audit as JSON (every suspected row's line number)."),
    ] = False,
    rows: Annotated[
        int, typer.Option("--rows", min=0, help="Suspected rows to show (0: all stored).")
    ] = 20,
) -> None:
    """Show a version's label audit: verdict, estimated noise per class, suspected rows, and
    the shift of the rows it adds against its parent."""
    with reported_errors(), _client() as client:
        found = client.get_dataset_audit(version, max_rows=0 if json else rows)
    if json:
        print_message(found)
        return
    _print_label_audit(found)
    if found.HasField("parent_shift"):
        _print_parent_shift(found.parent_shift)


def _print_parent_shift(shift: resources_pb2.ParentShift) -> None:
    status = _enum_name(resources_pb2.ParentShiftStatus, shift.status, "PARENT_SHIFT_STATUS_")
    style = "yellow" if shift.status == resources_pb2.PARENT_SHIFT_STATUS_FLAGGED else "bold"
    console.print(f"shift against the parent {shift.parent_version}: [{style}]{status.upper()}[/]")
    if shift.status != resources_pb2.PARENT_SHIFT_STATUS_SKIPPED:
        console.print(
            f"effect {shift.effect_size:+.3f} (AUC {shift.auc:.3f}; flagged from "
            f"{shift.min_effect:g} at p <= {shift.significance_level:g}), permutation p = "
            f"{shift.p_value:.3g} ({shift.permutations}); {shift.version_rows:,} added rows "
            f"against {shift.parent_rows:,} of the parent; report only"
        )
    else:
        console.print(shift.reason, markup=False)


def _print_label_audit(found: resources_pb2.DatasetAudit) -> None:
    verdict = _enum_name(resources_pb2.LabelAuditVerdict, found.verdict, "LABEL_AUDIT_VERDICT_")
    action = _enum_name(resources_pb2.LabelAuditAction, found.action, "LABEL_AUDIT_ACTION_")
    console.print(
        f"[bold]{found.dataset_version}[/bold]: label audit {verdict.upper()} "
        f"(policy: {action} above {found.max_noise_rate:.0%} estimated noise)"
    )
    if found.reason:
        console.print(found.reason)
    if found.verdict in (
        resources_pb2.LABEL_AUDIT_VERDICT_PENDING,
        resources_pb2.LABEL_AUDIT_VERDICT_SKIPPED,
        resources_pb2.LABEL_AUDIT_VERDICT_FAILED,
    ):
        return
    console.print(
        f"estimated noise {found.noise_rate:.1%}; {found.suspected_count:,} of "
        f"{found.row_count:,} rows suspected; out-of-fold accuracy "
        f"{found.out_of_fold_accuracy:.1%} ({found.folds} folds, encoder {found.encoder})"
    )
    _print_table(
        ["label", "rows", "suspected", "est. noise"],
        [
            [c.label, f"{c.row_count:,}", f"{c.suspected_count:,}", f"{c.noise_rate:.1%}"]
            for c in found.classes
        ],
    )
    _print_table(
        ["line", "given", "suggested", "label quality"],
        [
            [str(r.line_number), r.given_label, r.suggested_label, f"{r.label_quality:.3f}"]
            for r in found.suspected_rows
        ],
        caption=f"all rows: tuneline datasets audit {found.dataset_version} --json",
    )
