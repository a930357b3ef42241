"""``tuneline jobs``: training jobs: create, show, list, cancel, watch (a live progress bar)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from shared.names import TRAINING_JOB
from tuneline.cli.endpoints import target
from tuneline.cli.output import console, err_console, print_message, reported_errors
from tuneline.client.names import qualified
from tuneline.client.trainer import TrainerClient
from tuneline.common.v1 import resources_pb2 as common_pb2
from tuneline.trainer.v1 import resources_pb2

app = typer.Typer(help="Training jobs: create, show, list, cancel, watch.", no_args_is_help=True)


class Method(StrEnum):
    """Adapter methods the CLI accepts."""

    lora = "lora"
    dora = "dora"
    rslora = "rslora"


class Schedule(StrEnum):
    """Learning-rate schedules the CLI accepts."""

    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class State(StrEnum):
    """Job states the CLI filters by."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


_METHODS = {
    Method.lora: common_pb2.ADAPTER_METHOD_LORA,
    Method.dora: common_pb2.ADAPTER_METHOD_DORA,
    Method.rslora: common_pb2.ADAPTER_METHOD_RSLORA,
}
_SCHEDULES = {
    Schedule.constant: common_pb2.LEARNING_RATE_SCHEDULE_CONSTANT,
    Schedule.linear: common_pb2.LEARNING_RATE_SCHEDULE_LINEAR,
    Schedule.cosine: common_pb2.LEARNING_RATE_SCHEDULE_COSINE,
}
_STYLES = {
    "QUEUED": "yellow",
    "RUNNING": "cyan",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "magenta",
}
_TERMINAL = {
    resources_pb2.TRAINING_JOB_STATE_SUCCEEDED,
    resources_pb2.TRAINING_JOB_STATE_FAILED,
    resources_pb2.TRAINING_JOB_STATE_CANCELLED,
}


def _client() -> TrainerClient:
    return TrainerClient(target("trainer"))


def _job_name(job: str) -> str:
    """``j1`` or ``trainingJobs/j1`` → ``trainingJobs/j1``."""
    return qualified(TRAINING_JOB, job)


def _state(job: resources_pb2.TrainingJob | resources_pb2.TrainingProgress) -> str:
    return resources_pb2.TrainingJobState.Name(job.state).removeprefix("TRAINING_JOB_STATE_")


def _styled_state(job: resources_pb2.TrainingJob) -> str:
    state = _state(job)
    return f"[{_STYLES.get(state, 'white')}]{state}[/]"


def _money(money: common_pb2.Money) -> str:
    return f"{money.units + money.nanos / 1e9:.4f} {money.currency_code}"


def _print_estimate(
    planned: resources_pb2.TrainingJob, estimate: resources_pb2.TrainingEstimate
) -> None:
    basis = (
        f"measured on {estimate.measured_runs} earlier run(s) on {estimate.device_type}"
        if estimate.measured_runs
        else "the server's conservative default (no earlier run of this base model)"
    )
    table = Table("estimate", "value", title="dry run: nothing was created")
    table.add_row("train rows", str(estimate.train_examples))
    table.add_row("train tokens (one pass)", str(estimate.train_tokens))
    table.add_row("planned steps", str(estimate.planned_steps))
    table.add_row("tokens to process", str(estimate.estimated_tokens))
    table.add_row("validation tokens", str(estimate.estimated_validation_tokens))
    table.add_row(
        "throughput",
        f"{estimate.tokens_per_device_second:.1f} train tokens/device-s (a validation token "
        f"counts a third), {basis}",
    )
    table.add_row("fixed time per run", f"{estimate.overhead_device_seconds:.1f} s")
    table.add_row("device time", f"{estimate.estimated_device_seconds:.1f} s")
    table.add_row("cost", _money(estimate.estimated_cost))
    console.print(table)
    console.print(
        f"on {planned.base_model.model_name or planned.base_model.model_path}, "
        f"batch {planned.hyperparameters.batch_size}, "
        f"max_seq_length {planned.hyperparameters.max_seq_length}"
    )


@app.command()
def create(
    split: Annotated[str, typer.Argument(help="The split: datasets/{d}/versions/{v}/splits/{s}.")],
    target_model: Annotated[
        str, typer.Option("--target-model", help="The registry model: models/{model}.")
    ],
    base_model: Annotated[
        str,
        typer.Option(
            "--base-model",
            help="A model name under the models root, or an absolute path inside an allowed root.",
        ),
    ],
    job_id: Annotated[str, typer.Option("--id", help="The job id (default: generated).")] = "",
    method: Annotated[Method, typer.Option(help="Adapter method.")] = Method.lora,
    rank: Annotated[int, typer.Option(help="LoRA rank (0: default 8).")] = 0,
    alpha: Annotated[float, typer.Option(help="LoRA alpha (0: 2 x rank).")] = 0.0,
    dropout: Annotated[float | None, typer.Option(help="Adapter dropout (default 0).")] = None,
    target_module: Annotated[
        list[str] | None,
        typer.Option("--target-module", help="A module to adapt (repeatable)."),
    ] = None,
    all_linear: Annotated[
        bool, typer.Option("--all-linear", help="Adapt every linear layer but the head.")
    ] = False,
    learning_rate: Annotated[
        float, typer.Option("--lr", help="Peak learning rate (0: default 2e-4).")
    ] = 0.0,
    schedule: Annotated[Schedule | None, typer.Option(help="Schedule after warm-up.")] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="Warm-up fraction.")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per micro-batch (0: 16).")] = 0,
    accumulation: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 0,
    epochs: Annotated[float, typer.Option(help="Passes over the train part.")] = 0.0,
    max_steps: Annotated[int, typer.Option(help="Upper bound on optimizer steps.")] = 0,
    max_seq_length: Annotated[int, typer.Option(help="Token limit per row.")] = 0,
    seed: Annotated[int | None, typer.Option(help="Seed (default 42).")] = None,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 0,
    patience: Annotated[int, typer.Option(help="Early-stopping patience (0: off).")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 0,
    keep_best: Annotated[int, typer.Option(help="Keep the best K checkpoints (0: all).")] = 0,
    watch_progress: Annotated[
        bool, typer.Option("--watch", help="Watch the job's progress after creating it.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the job and estimate its tokens, device time and cost; create nothing.",
        ),
    ] = False,
) -> None:
    """Queue a training job; every unset option takes the server's default."""
    base = common_pb2.BaseModel()
    if base_model.startswith("/"):
        base.model_path = base_model
    else:
        base.model_name = base_model
    adapter = common_pb2.AdapterSpec(
        method=_METHODS[method], rank=rank, alpha=alpha, target_modules=target_module or []
    )
    if dropout is not None:
        adapter.dropout = dropout
    if all_linear:
        adapter.target_preset = common_pb2.TARGET_MODULE_PRESET_ALL_LINEAR
    hyper = common_pb2.Hyperparameters(
        learning_rate=learning_rate,
        batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        epochs=epochs,
        max_steps=max_steps,
        max_seq_length=max_seq_length,
    )
    if schedule is not None:
        hyper.learning_rate_schedule = _SCHEDULES[schedule]
    if warmup_ratio is not None:
        hyper.warmup_ratio = warmup_ratio
    if seed is not None:
        hyper.seed = seed
    job = resources_pb2.TrainingJob(
        target_model=target_model,
        split=split,
        base_model=base,
        adapter_spec=adapter,
        hyperparameters=hyper,
        stopping_rules=resources_pb2.StoppingRules(
            eval_every_n_steps=eval_every, early_stopping_patience=patience
        ),
        checkpoint_policy=resources_pb2.CheckpointPolicy(
            every_n_steps=checkpoint_every, keep_best_k=keep_best
        ),
    )
    if dry_run:
        with reported_errors(), _client() as client:
            planned, estimate = client.estimate_training_job(job, job_id=job_id)
        _print_estimate(planned, estimate)
        return
    with reported_errors(), _client() as client:
        created = client.create_training_job(job, job_id=job_id)
    console.print(
        f"queued [bold]{created.name}[/bold]: {created.progress.total_steps} steps planned on "
        f"{created.base_model.model_name or created.base_model.model_path}"
    )
    if watch_progress:
        watch(created.name)


@app.command()
def show(
    job: Annotated[str, typer.Argument(help="The job: trainingJobs/{job} or its id.")],
) -> None:
    """Show a job: state, progress, cost, checkpoints (as JSON)."""
    with reported_errors(), _client() as client:
        print_message(client.get_training_job(_job_name(job)))


@app.command("list")
def list_jobs(
    target_model: Annotated[str, typer.Option("--target-model", help="Only this model.")] = "",
    state: Annotated[State | None, typer.Option(help="Only jobs in this state.")] = None,
    split: Annotated[str, typer.Option(help="Only jobs on this split.")] = "",
) -> None:
    """List jobs, newest first."""
    state_value = (
        resources_pb2.TrainingJobState.Value(f"TRAINING_JOB_STATE_{state.value.upper()}")
        if state
        else resources_pb2.TRAINING_JOB_STATE_UNSPECIFIED
    )
    table = Table("job", "state", "model", "step", "train loss", "val loss", "cost")
    with reported_errors(), _client() as client:
        for job in client.list_training_jobs(
            target_model=target_model, state=state_value, split=split
        ):
            progress = job.progress
            table.add_row(
                job.name,
                _styled_state(job),
                job.target_model,
                f"{progress.step}/{progress.total_steps}",
                f"{progress.train_loss:.4f}" if progress.HasField("train_loss") else "-",
                f"{progress.validation_loss:.4f}" if progress.HasField("validation_loss") else "-",
                _money(job.cost.amount),
            )
    console.print(table)


@app.command()
def cancel(
    job: Annotated[str, typer.Argument(help="The job: trainingJobs/{job} or its id.")],
    reason: Annotated[str, typer.Option(help="Why, for the record.")] = "",
) -> None:
    """Cancel a queued or running job (a running one stops within seconds)."""
    with reported_errors(), _client() as client:
        cancelled = client.cancel_training_job(_job_name(job), reason=reason)
    console.print(f"{cancelled.name}: {_styled_state(cancelled)} (cancel requested)")


@app.command()
def watch(
    job: Annotated[str, typer.Argument(help="The job: trainingJobs/{job} or its id.")],
) -> None:
    """Follow a job live: a progress bar with the loss, until it ends."""
    name = _job_name(job)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    final: resources_pb2.TrainingJob | None = None
    with reported_errors(), _client() as client, Progress(*columns, console=console) as bar:
        task = bar.add_task(name, total=None, loss="", speed="")
        for update in client.watch_training_job(name):
            if update.HasField("training_job"):
                final = update.training_job
            progress = update.progress
            loss = f"loss {progress.train_loss:.4f}" if progress.HasField("train_loss") else ""
            if progress.HasField("validation_loss"):
                loss += f"  val {progress.validation_loss:.4f}"
            bar.update(
                task,
                total=progress.total_steps or None,
                completed=progress.step,
                description=f"{name} [{_state(progress)}]",
                loss=loss,
                speed=f"{progress.tokens_per_second:,.0f} tok/s",
            )
        if final is None or final.state not in _TERMINAL:
            final = client.get_training_job(name)
    state = _state(final)
    style = _STYLES.get(state, "white")
    console.print(f"{name}: [{style}]{state}[/]  cost {_money(final.cost.amount)}")
    if final.state == resources_pb2.TRAINING_JOB_STATE_FAILED:
        reason = resources_pb2.TrainingFailureReason.Name(final.failure_reason)
        err_console.print(f"[red]{reason}[/red]: {final.failure_message}")
        raise typer.Exit(1)
