"""The training loop: one worker plan in, checkpoints and progress messages out (imports torch).

A plain loop rather than Hugging Face's ``Trainer``, because the service needs exact control
of what the contracts promise: resume with optimizer, RNG and data position restored; a
checkpoint written atomically with its resumable state beside it; cancellation between
micro-batches; an out-of-memory retry with the same effective batch; and padding-free packed
batches with logits computed only where a loss is taken.

Per optimizer step: the step's examples (see :mod:`.sampling`) are cut into micro-batches, each
batch's summed loss is divided by the whole step's loss weight (completion tokens for causal
LM, examples for classification, weighted by row), so accumulation gives the same gradient
as one big batch; gradients are clipped, the learning rate is set from the schedule, AdamW
steps. Validation, early stopping, checkpoints and stopping rules run between steps.
"""

from __future__ import annotations

import gc
import logging
import math
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from services.trainer.adapters.engine.attention import (
    VARLEN_ATTENTION,
)
from services.trainer.adapters.engine.compilation import compile_or_fall_back
from services.trainer.adapters.engine.distributed import SOLO, DataParallelGroup
from services.trainer.adapters.engine.fused_loss import (
    HeadLoss,
    decoder_of,
    fused_head_loss,
    liger_layer_kernels,
)
from services.trainer.adapters.engine.preparation import (
    PRECISION_DTYPES,
    TrainingData,
    attention_for,
    build_model,
    check_model_unchanged,
    prepare_data,
)
from services.trainer.adapters.engine.sampling import (
    micro_batches,
    step_groups,
    token_budget_micro_batches,
)
from services.trainer.adapters.engine.signals import StopSignals, TrainingFailure
from services.trainer.adapters.engine.state import (
    LoopPosition,
    load_training_state,
    save_training_state,
)
from services.trainer.domain.config import (
    Hyperparameters,
    Precision,
    planned_steps,
    resolve_for_device,
    warmup_steps_for,
)
from services.trainer.domain.jobs import (
    EngineFallback,
    FailureReason,
    StopReason,
)
from services.trainer.domain.training_rules import EarlyStopping, learning_rate_at
from services.trainer.domain.worker_messages import (
    WorkerCheckpoint,
    WorkerFinished,
    WorkerMessage,
    WorkerOomRetry,
    WorkerPlan,
    WorkerProgress,
    WorkerStarted,
)
from shared.artifacts import ArtifactStore, artifact_store_from_uri
from shared.modeling import (
    AdapterMetadata,
    DataUnavailable,
    EncodedExample,
    ModelLoadFailed,
    ModelRefused,
    folder_sha256,
    write_adapter_metadata,
)
from shared.modeling.batching import Batch, pack_batch, pad_batch
from shared.modeling.loading import resolve_device
from shared.modeling.tokenizer_fingerprint import (
    tokenizer_fingerprint_extra,
)
from shared.task_types import TaskType

log = logging.getLogger(__name__)

Report = Callable[[WorkerMessage], None]

#: Loss-curve points per run (the contracts keep at most 1000).
_LOSS_POINTS = 100
#: A progress snapshot at least this often (seconds), besides loss-curve points.
_PROGRESS_EVERY_SECONDS = 1.0
#: Steps the tokens/s and ETA averages look back over.
_PACE_WINDOW = 20
#: How often a held worker (``fault_hold_after_step``) looks for its halt or cancel.
_HOLD_POLL_SECONDS = 0.05

#: What rank 0 heard on its control channel, as every rank agrees it at a step boundary.
_GO_ON, _CANCEL, _HALT, _ABANDON = 0, 1, 2, 3
#: Stopping decisions as numbers a collective can carry (None: go on).
_STOP_CODES: list[StopReason | None] = [None, *StopReason]


class TrainingHalted(Exception):
    """The worker stopped for its service: shutting down (``keep_progress``: a checkpoint of
    the steps since the last one is written first) or gone (nothing is written)."""

    def __init__(self, *, keep_progress: bool = False) -> None:
        super().__init__("halted" if keep_progress else "abandoned")
        self.keep_progress = keep_progress


class _StepInterrupted(Exception):
    """A cancel or halt arrived between micro-batches; the partial step is dropped."""


def batch_loss(
    model: torch.nn.Module,
    batch: Batch,
    task: TaskType,
    *,
    varlen: bool,
    head_loss: HeadLoss | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ weight * cross-entropy, Σ weight) of a batch, in fp32.

    Causal LM: only positions whose next token carries loss get logits (a boolean
    ``logits_to_keep``), so prompt and padding positions cost no vocabulary projection. With a
    ``head_loss`` (see :mod:`.fused_loss`) the model's decoder gives the final hidden states and
    ``head_loss`` takes the head and the cross-entropy of the kept positions in one.
    """
    if task is TaskType.CLASSIFICATION:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        losses = torch.nn.functional.cross_entropy(logits.float(), batch.labels, reduction="none")
        return (losses * batch.weights).sum(), batch.weights.sum()
    targets = batch.labels[:, 1:]
    keep = torch.zeros_like(batch.labels, dtype=torch.bool)
    keep[:, :-1] = targets != -100
    # no KV cache: with one, transformers skips the packed-sequence mask (and training needs none)
    kwargs: dict[str, object] = {
        "input_ids": batch.input_ids,
        "logits_to_keep": keep,
        "use_cache": False,
    }
    if batch.position_ids is not None:  # packed: attention stays inside each example
        kwargs["position_ids"] = batch.position_ids
        if varlen:
            kwargs |= {
                "cu_seq_lens_q": batch.cu_seq_lens,
                "cu_seq_lens_k": batch.cu_seq_lens,
                "max_length_q": batch.max_length,
                "max_length_k": batch.max_length,
            }
    else:
        kwargs["attention_mask"] = batch.attention_mask
    selected = targets[keep[:, :-1]]
    decoder = decoder_of(model) if head_loss is not None else None
    if head_loss is not None and decoder is not None:
        del kwargs["logits_to_keep"]
        hidden = decoder(**kwargs).last_hidden_state[keep]
        losses = head_loss(hidden, selected)
    else:
        logits = model(**kwargs).logits
        logits = logits.reshape(-1, logits.shape[-1])
        losses = torch.nn.functional.cross_entropy(logits.float(), selected, reduction="none")
    if batch.sequence_index is not None:
        owners = batch.sequence_index[:, 1:][keep[:, :-1]]
        weights = batch.weights[owners]
    else:
        rows = torch.arange(batch.labels.shape[0], device=batch.labels.device)
        weights = batch.weights[rows[:, None].expand_as(targets)[keep[:, :-1]]]
    return (losses * weights).sum(), weights.sum()


def _loss_weight(examples: list[EncodedExample], task: TaskType) -> float:
    if task is TaskType.CLASSIFICATION:
        return sum(e.weight for e in examples)
    return sum(e.weight * e.loss_tokens for e in examples)


class _ProgressTracker:
    """Loss means, tokens/s and ETA for progress snapshots and loss-curve points.

    A snapshot goes out at every loss-curve point (about :data:`_LOSS_POINTS` per run), at
    every validation, and otherwise at least every :data:`_PROGRESS_EVERY_SECONDS`.
    """

    def __init__(self, *, total_steps: int, elapsed_before: float, tokens_seen: int) -> None:
        self.total_steps = total_steps
        self.log_every = max(1, total_steps // _LOSS_POINTS)
        self._elapsed_before = elapsed_before
        self._started = time.monotonic()
        self._pace: deque[tuple[float, int]] = deque(maxlen=_PACE_WINDOW + 1)
        self._pace.append((self._started, tokens_seen))
        self._snapshot: list[float] = []
        self._interval: list[float] = []
        self._last_sent = 0.0

    def elapsed(self) -> float:
        """Training time of the job: earlier attempts plus this one."""
        return self._elapsed_before + time.monotonic() - self._started

    def step_done(self, tokens_seen: int) -> None:
        self._pace.append((time.monotonic(), tokens_seen))

    def losses_read(self, losses: list[float]) -> None:
        """Train losses of steps done, once read back from the device."""
        self._snapshot += losses
        self._interval += losses

    def due(self, step: int, *, validated: bool, final: bool) -> bool:
        """Whether a progress message is due after ``step``."""
        if step % self.log_every == 0 or final or validated:
            return True
        return time.monotonic() - self._last_sent >= _PROGRESS_EVERY_SECONDS

    def snapshot(
        self, step: int, epoch: float, rate: float, validation_loss: float | None, *, final: bool
    ) -> WorkerProgress:
        """The progress message after ``step`` (when :meth:`due`; losses read first)."""
        now = time.monotonic()
        log_point = step % self.log_every == 0 or final
        (first_time, first_tokens), (last_time, last_tokens) = self._pace[0], self._pace[-1]
        seconds = last_time - first_time
        per_step = seconds / (len(self._pace) - 1) if len(self._pace) > 1 else 0.0
        message = WorkerProgress(
            step=step,
            total_steps=self.total_steps,
            epoch=epoch,
            train_loss=sum(self._snapshot) / len(self._snapshot) if self._snapshot else None,
            learning_rate=rate,
            tokens_per_second=(last_tokens - first_tokens) / seconds if seconds > 0 else 0.0,
            tokens_seen=last_tokens,
            elapsed_seconds=self.elapsed(),
            eta_seconds=max(0, self.total_steps - step) * per_step,
            validation_loss=validation_loss,
            log_point=log_point,
            interval_train_loss=(
                sum(self._interval) / len(self._interval) if log_point and self._interval else None
            ),
        )
        self._last_sent = now
        self._snapshot = []
        if log_point:
            self._interval = []
        return message


class TrainingSession:
    """One model + optimizer, trained from a position until a stopping rule, a cancel, a halt
    or an error. A new session (a new model) is built for the OOM retry."""

    def __init__(
        self,
        plan: WorkerPlan,
        hp: Hyperparameters,
        data: TrainingData,
        device: torch.device,
        *,
        micro_batch_size: int,
        report: Report,
        signals: StopSignals,
        store: ArtifactStore,
        group: DataParallelGroup = SOLO,
        micro_batch_tokens: int = 0,
    ) -> None:
        self.task = plan.task_type
        self.group = group
        attention, fallback = attention_for(plan, hp, device)
        self.varlen = attention == VARLEN_ATTENTION
        self.fallbacks: tuple[EngineFallback, ...] = ()
        if fallback is not None:
            # without the varlen kernel a packed row costs quadratic attention over all of it;
            # length-grouped padded batches waste less. Said loudly: it is a slower path.
            log.warning(
                "packing is off: no usable varlen attention kernel; length-grouped padded "
                "batches instead",
                extra={"reason": fallback.reason, "detail": fallback.detail},
            )
            self.fallbacks = (fallback,)
            hp = replace(hp, packing=False)
        self.plan, self.hp, self.data, self.device = plan, hp, data, device
        self.micro_batch_size = micro_batch_size
        self.examples_per_step = max(1, hp.batch_size) * max(1, hp.gradient_accumulation_steps)
        self.report, self.signals, self.store = report, signals, store
        self.packing = bool(hp.packing) and self.task is TaskType.CAUSAL_LM
        # a token budget packs micro-batches; padded ones keep their example count
        self.micro_batch_tokens = micro_batch_tokens if self.packing else 0
        # fully sharded: the whole base model never sits on one device, only its shards do
        load_device = torch.device("cpu") if group.fully_sharded else None
        self.model = build_model(plan, hp, data, device, attention, load_device=load_device)
        group.copy_from_main(self.model.parameters())
        if group.fully_sharded:
            from services.trainer.adapters.engine.sharding import (  # noqa: PLC0415 - FSDP only
                shard_frozen_weights,
            )

            shard_frozen_weights(self.model, device, group.world_size)
        self.optimizer = self._optimizer()
        assert hp.precision is not None
        self.autocast_dtype = (
            None if hp.precision is Precision.FP32 else PRECISION_DTYPES[hp.precision]
        )
        self.scaler = torch.amp.GradScaler("cuda") if hp.precision is Precision.FP16 else None
        self.lengths = [e.length for e in data.train]
        self.total_steps = planned_steps(len(data.train), hp)
        self.warmup_steps = warmup_steps_for(hp, self.total_steps)
        self.last_state_uri = ""
        self.last_checkpoint_step = -1
        self.position = LoopPosition()
        #: The head and loss fused (Liger, CUDA) for causal LM; None: logits, then the loss.
        # not fully sharded: it reads the head's weight outside the model's forward, where
        # FSDP holds only this rank's shard of it
        self.head_loss = (
            fused_head_loss(self.model, device)
            if self.task is TaskType.CAUSAL_LM and not group.fully_sharded
            else None
        )
        #: Builds the next micro-batch ahead on CUDA (shut down when :meth:`run` ends).
        self._prefetch = (
            ThreadPoolExecutor(1, thread_name_prefix="tuneline-batches")
            if device.type == "cuda"
            else None
        )
        # by default only on CUDA: on the CPU compiling takes longer than short jobs gain
        layers_compiled = False
        if plan.compile_layers if plan.compile_layers is not None else device.type == "cuda":
            self.model.train()
            compiled = compile_or_fall_back(self.model, self._probe_loss, device)
            self.fallbacks += () if compiled is None else (compiled,)
            layers_compiled = compiled is None
        if not layers_compiled:  # eager layers: on CUDA, Liger's fused kernels where installed
            liger = liger_layer_kernels(self.model, device)
            self.fallbacks += () if liger is None else (liger,)

    # -- set-up -----------------------------------------------------------------------------

    def _optimizer(self) -> torch.optim.Optimizer:
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                (no_decay if parameter.ndim < 2 else decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": self.hp.weight_decay or 0.0},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.hp.learning_rate, fused=self.device.type == "cuda")

    def _autocast(self) -> AbstractContextManager[object]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _probe_loss(self) -> torch.Tensor:
        """The mean loss of the first two training examples (to prove compiled layers work)."""
        batch = self._batch(self.data.train[:2]).to(self.device)
        with self._autocast():
            total, weight = batch_loss(
                self.model, batch, self.task, varlen=self.varlen, head_loss=self.head_loss
            )
        return total / weight.clamp_min(1e-12)

    def _batch(self, examples: list[EncodedExample]) -> Batch:
        if self.packing:
            return pack_batch(examples)
        return pad_batch(examples, self.data.pad_token_id)

    # -- the loop -----------------------------------------------------------------------------

    def run(self, resume_state_uri: str) -> WorkerFinished:
        """Train until a stopping rule or a cancel; returns the finishing message (already
        reported). Raises :class:`TrainingHalted`, :class:`TrainingFailure`, or a CUDA
        out-of-memory error for the caller to retry."""
        try:
            return self._train(resume_state_uri)
        finally:
            if self._prefetch is not None:
                self._prefetch.shutdown(cancel_futures=True)

    def _train(self, resume_state_uri: str) -> WorkerFinished:
        position = self._restore(resume_state_uri)
        early = EarlyStopping(
            self.plan.stopping.early_stopping_patience,
            self.plan.stopping.early_stopping_min_delta,
            best=position.best_validation_loss,
            stale=position.stale_validations,
        )
        self.report(
            WorkerStarted(
                step=position.step,
                total_steps=self.total_steps,
                # the whole slot: the job's cost counts every device its ranks hold
                device=self.plan.device if self.group.distributed else str(self.device),
                device_type=_device_type(self.device),
                device_count=self.group.world_size,
                hyperparameters=self.hp,
                train_examples=len(self.data.train),
                validation_examples=len(self.data.validation),
                tokens_seen=position.tokens_seen,
                skipped_rows=self.data.skipped,
                fallbacks=self.fallbacks,
            )
        )
        tracker = _ProgressTracker(
            total_steps=self.total_steps,
            elapsed_before=self.plan.elapsed_before_seconds,
            tokens_seen=position.tokens_seen,
        )
        #: Steps' losses still on the device: read back together when something reports them.
        unread: list[tuple[int, torch.Tensor]] = []
        self.model.train()
        try:
            stop, cancelled, groups = self._steps(position, early, tracker, unread)
        except TrainingHalted as halted:
            # the service is shutting down: keep what was trained since the last checkpoint,
            # so the resumed attempt does not redo it (the supervisor waits its grace period)
            self._read_losses(unread, tracker)
            if (
                halted.keep_progress
                and position.step > 0
                and self.last_checkpoint_step != position.step
            ):
                position.elapsed_seconds = tracker.elapsed()
                groups = self._epoch_groups(position.epoch_index)
                epoch = position.epoch_index + position.step_in_epoch / max(1, len(groups))
                self._checkpoint(epoch, None, stop_reason=None)
            raise
        self._read_losses(unread, tracker)
        epoch_done = position.epoch_index + position.step_in_epoch / max(1, len(groups))
        if cancelled and position.step > 0 and self.last_checkpoint_step != position.step:
            position.elapsed_seconds = tracker.elapsed()
            # final, but partly trained: the reason tells consumers not to promote it as done
            self._checkpoint(epoch_done, None, stop_reason=StopReason.CANCELLED)
        finished = WorkerFinished(
            step=position.step,
            epoch=epoch_done,
            final_train_loss=position.last_train_loss,
            elapsed_seconds=tracker.elapsed(),
            tokens_seen=position.tokens_seen,
            stop_reason=stop,
            cancelled=cancelled,
        )
        self.report(finished)
        return finished

    def _steps(
        self,
        position: LoopPosition,
        early: EarlyStopping,
        tracker: _ProgressTracker,
        unread: list[tuple[int, torch.Tensor]],
    ) -> tuple[StopReason | None, bool, list[list[int]]]:
        """Train step by step until a stopping rule or a cancel: ``(stop, cancelled, the last
        epoch's groups)``. Raises :class:`TrainingHalted` at a step boundary on a halt."""
        stop: StopReason | None = None
        cancelled = False
        groups: list[list[int]] = []
        while stop is None and not cancelled:
            groups = self._epoch_groups(position.epoch_index)
            while stop is None and position.step_in_epoch < len(groups):
                cancelled = self._interrupted()
                if cancelled:
                    break
                try:
                    loss, tokens, rate = self._step(groups[position.step_in_epoch], position.step)
                except _StepInterrupted:
                    cancelled = self._interrupted()
                    break
                unread.append((position.step, loss))
                position.step += 1
                position.step_in_epoch += 1
                position.tokens_seen += tokens
                epoch = position.epoch_index + position.step_in_epoch / len(groups)
                tracker.step_done(position.tokens_seen)
                stop = self._stop_reason(position.step, tracker.elapsed())
                validation_loss = None
                if position.step % max(1, self.plan.stopping.eval_every_n_steps) == 0 or stop:
                    validation_loss = self._validate_and_judge(early)
                    if stop is None and early.should_stop:
                        stop = StopReason.EARLY_STOPPING
                self._report_step(tracker, unread, epoch, rate, validation_loss, stop)
                self._maybe_hold(position.step, stop)
            if stop is None and not cancelled:
                position.epoch_index += 1
                position.step_in_epoch = 0
        return stop, cancelled, groups

    def _report_step(  # noqa: PLR0917 - what one step leaves to report
        self,
        tracker: _ProgressTracker,
        unread: list[tuple[int, torch.Tensor]],
        epoch: float,
        rate: float,
        validation_loss: float | None,
        stop: StopReason | None,
    ) -> None:
        """The progress message and the checkpoint due after a step, if any; the losses are
        read back from the device only then."""
        step = self.position.step
        checkpoint_due = (
            stop is not None or step % max(1, self.plan.checkpointing.every_n_steps) == 0
        )
        final = stop is not None
        progress_due = tracker.due(step, validated=validation_loss is not None, final=final)
        if progress_due or checkpoint_due:
            self._read_losses(unread, tracker)
        if progress_due:
            self.report(tracker.snapshot(step, epoch, rate, validation_loss, final=final))
        if checkpoint_due:
            self.position.elapsed_seconds = tracker.elapsed()
            self._checkpoint(epoch, validation_loss, stop_reason=stop)

    def _read_losses(
        self, unread: list[tuple[int, torch.Tensor]], tracker: _ProgressTracker
    ) -> None:
        """Read the steps' losses back from the device in one transfer (one synchronisation,
        not one per step) into the position and the tracker; fails on a non-finite one."""
        if not unread:
            return
        values = read_back([loss for _step, loss in unread])
        position = self.position
        for (step, _loss), value in zip(unread, values, strict=True):
            if not math.isfinite(value):
                raise TrainingFailure(
                    FailureReason.NON_FINITE_LOSS,
                    f"the training loss became {value} at step {step + 1}",
                )
            position.last_train_loss = value
            position.checkpoint_loss_sum += value
            position.checkpoint_loss_steps += 1
        tracker.losses_read(values)
        unread.clear()

    def _restore(self, resume_state_uri: str) -> LoopPosition:
        if resume_state_uri:
            self.position = load_training_state(
                self.store.materialize(resume_state_uri),
                model=self.model,
                optimizer=self.optimizer,
                scaler=self.scaler,
            )
            self.last_state_uri = resume_state_uri
            self.last_checkpoint_step = self.position.step
        return self.position

    def _epoch_groups(self, epoch: int) -> list[list[int]]:
        assert self.hp.seed is not None
        return step_groups(
            self.lengths,
            seed=self.hp.seed,
            epoch=epoch,
            examples_per_step=self.examples_per_step,
            group_by_length=not self.packing,
        )

    def _maybe_hold(self, step: int, stop: StopReason | None) -> None:
        """Test-only fault injection (``fault_hold_after_step``): park a job's first run at a
        known step until a halt or a cancel arrives (the next :meth:`_interrupted` acts on it)."""
        if stop is not None or self.plan.resume_state_uri or not self.group.is_main:
            return  # the other ranks wait for rank 0 in the step's first collective
        if step != self.plan.fault_hold_after_step:
            return
        signals = self.signals
        while not (signals.halt or signals.abandoned or signals.cancel or signals.budget_exhausted):
            time.sleep(_HOLD_POLL_SECONDS)

    def _interrupted(self) -> bool:
        """True on a cancel; raises :class:`TrainingHalted` on a halt (rank 0's signals,
        agreed by every rank)."""
        signals = self.signals
        heard = (
            _ABANDON
            if signals.abandoned
            else _HALT
            if signals.halt
            else _CANCEL
            if signals.cancel
            else _GO_ON
        )
        decided = self.group.decide(heard, self.device)
        if decided in (_HALT, _ABANDON):
            raise TrainingHalted(keep_progress=decided == _HALT)
        return decided == _CANCEL

    def _validate_and_judge(self, early: EarlyStopping) -> float | None:
        """Validate, and let early stopping see the loss (remembered for a resume)."""
        validation_loss = self.validate()
        if validation_loss is not None:
            position = self.position
            position.last_validation_loss = validation_loss
            early.observe(validation_loss)
            position.best_validation_loss = early.best
            position.stale_validations = early.stale
        return validation_loss

    def _stop_reason(self, step: int, elapsed_seconds: float) -> StopReason | None:
        """Rank 0's stopping decision (its clock, its budget signal), on every rank."""
        local = self._local_stop_reason(step, elapsed_seconds)
        code = self.group.decide(_STOP_CODES.index(local), self.device)
        return _STOP_CODES[code]

    def _local_stop_reason(self, step: int, elapsed_seconds: float) -> StopReason | None:
        hp = self.hp
        if step >= self.total_steps:
            if hp.max_steps and step >= hp.max_steps:
                return StopReason.MAX_STEPS
            return StopReason.EPOCHS_COMPLETED
        limit = self.plan.stopping.max_duration_seconds
        if limit is not None and elapsed_seconds >= limit:
            return StopReason.MAX_DURATION
        if self.signals.budget_exhausted:
            return StopReason.BUDGET_EXHAUSTED
        return None

    def _step(self, group: list[int], step: int) -> tuple[torch.Tensor, int, float]:
        """One optimizer step over ``group``; returns (mean loss, still on the device; real
        tokens; learning rate)."""
        examples = [self.data.train[i] for i in group]
        denominator = max(_loss_weight(examples, self.task), 1e-12)
        accumulated = torch.zeros((), device=self.device)
        tokens = 0
        every_batch = self._micro_batches(group)
        for batch in self._device_batches(self.group.share(every_batch, self.lengths)):
            # alone, a cancel stops mid-step; ranks stop together, at the step's end
            signals = self.signals
            if not self.group.distributed and (signals.cancel or signals.halt or signals.abandoned):
                self.optimizer.zero_grad(set_to_none=True)
                raise _StepInterrupted
            self._maybe_inject_oom(batch)
            with self._autocast():
                total, _weight = batch_loss(
                    self.model, batch, self.task, varlen=self.varlen, head_loss=self.head_loss
                )
            scaled = total / denominator
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            accumulated += total.detach()
            tokens += batch.tokens
        for _ in range(self.group.passes_short(every_batch, self.lengths)):
            self._lockstep_pass([self.data.train[i] for i in every_batch[0]], backward=True)
        if self.group.distributed:
            self.group.sum_gradients(self.model.parameters())
            self.group.sum(accumulated)
            tokens = int(self.group.sum(torch.tensor([tokens], device=self.device)).item())
        rate = learning_rate_at(
            step,
            peak=self.hp.learning_rate,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            schedule=self.hp.learning_rate_schedule,  # type: ignore[arg-type]
        )
        for group_params in self.optimizer.param_groups:
            group_params["lr"] = rate
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.hp.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.hp.max_grad_norm
            )
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return accumulated / denominator, tokens, rate

    def _device_batches(self, pieces: list[list[int]]) -> Iterator[Batch]:
        """The micro-batches of ``pieces`` on the device, in order. On CUDA a background
        thread builds the next one in pinned memory while the current one trains, and its copy
        to the device does not block; on the CPU each is built when it is needed."""
        if self._prefetch is None:
            for indices in pieces:
                yield self._batch([self.data.train[i] for i in indices]).to(self.device)
            return

        def pinned(indices: list[int]) -> Batch:
            return self._batch([self.data.train[i] for i in indices]).pin_memory()

        upcoming: Future[Batch] | None = None
        for number, indices in enumerate(pieces):
            host = upcoming.result() if upcoming is not None else pinned(indices)
            later = pieces[number + 1] if number + 1 < len(pieces) else None
            upcoming = self._prefetch.submit(pinned, later) if later is not None else None
            yield host.to(self.device)

    def _micro_batches(self, group: list[int]) -> list[list[int]]:
        if self.micro_batch_tokens:
            return token_budget_micro_batches(
                group, self.lengths, token_budget=self.micro_batch_tokens
            )
        return micro_batches(
            group,
            self.lengths,
            micro_batch_size=self.micro_batch_size,
            group_by_length=not self.packing,
        )

    def _lockstep_pass(self, examples: list[EncodedExample], *, backward: bool) -> None:
        """A pass whose loss counts zero, so a fully sharded rank runs as many forwards (and
        backwards) as the busiest rank: each one gathers the weights from every rank."""
        batch = self._batch(examples).to(self.device)
        with self._autocast():
            total, _weight = batch_loss(
                self.model, batch, self.task, varlen=self.varlen, head_loss=self.head_loss
            )
        if backward:
            (total * 0.0).backward()

    def _maybe_inject_oom(self, batch: Batch) -> None:
        limit = self.plan.fault_oom_above_batch
        if limit and batch.examples > limit:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected: micro-batch of {batch.examples} examples > "
                f"{limit}, TUNELINE_TRAINER_FAULT_OOM_ABOVE_BATCH)"
            )

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean validation loss (per completion token, or per example); None without data."""
        examples = self.data.validation
        if not examples:
            return None
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        weight = torch.zeros((), device=self.device, dtype=torch.float64)
        # no gradients kept: twice the training micro-batch fits
        if self.micro_batch_tokens:
            pieces = token_budget_micro_batches(
                range(len(examples)),
                [e.length for e in examples],
                token_budget=2 * self.micro_batch_tokens,
            )
        else:
            ordered = sorted(range(len(examples)), key=lambda i: -examples[i].length)
            size = max(1, self.micro_batch_size * 2)
            pieces = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        for piece in self.group.shard(len(pieces)):  # each rank its share, summed below
            batch = self._batch([examples[i] for i in pieces[piece]]).to(self.device)
            with self._autocast():
                batch_total, batch_weight = batch_loss(
                    self.model, batch, self.task, varlen=self.varlen, head_loss=self.head_loss
                )
            total += batch_total.double()
            weight += batch_weight.double()
        for _ in range(self.group.shard_passes_short(len(pieces))):
            self._lockstep_pass([examples[i] for i in pieces[0]], backward=False)
        self.group.sum(total)
        self.group.sum(weight)
        self.model.train()
        return float(total / weight) if float(weight) > 0 else None

    def _checkpoint(
        self, epoch: float, validation_loss: float | None, *, stop_reason: StopReason | None
    ) -> None:
        """Write the adapter and the resumable state atomically, then report them; with a
        ``stop_reason`` it is the final checkpoint, written because training stopped."""
        position = self.position
        step = position.step
        train_loss = (
            position.checkpoint_loss_sum / position.checkpoint_loss_steps
            if position.checkpoint_loss_steps
            else position.last_train_loss
        )
        position.checkpoint_loss_sum, position.checkpoint_loss_steps = 0.0, 0
        if not self.group.is_main:  # the ranks' weights are identical: rank 0 writes them
            self.last_checkpoint_step = step
            return
        prefix = self.plan.artifact_prefix
        with tempfile.TemporaryDirectory(prefix="tuneline-checkpoint-") as temp:
            adapter_dir = Path(temp) / "adapter"
            self.model.save_pretrained(str(adapter_dir), safe_serialization=True)
            base = self.plan.base_model
            write_adapter_metadata(
                adapter_dir,
                AdapterMetadata(
                    task_type=self.task.value,
                    labels=list(self.data.labels),
                    max_seq_length=int(self.hp.max_seq_length),
                    base_model_files_sha256=base.files_sha256,
                    base_model_name=base.model_name,
                    base_model_path=base.model_path,
                    base_model_type=base.model_type,
                    training_job=self.plan.job,
                    step=step,
                    extra=tokenizer_fingerprint_extra(self.data.tokenizer_fingerprint),
                ),
            )
            digest = folder_sha256(adapter_dir)
            stored = self.store.put_directory(f"{prefix}/checkpoints/step-{step}", adapter_dir)
            try:
                state_dir = Path(temp) / "state"
                save_training_state(
                    state_dir,
                    model=self.model,
                    optimizer=self.optimizer,
                    position=position,
                    scaler=self.scaler,
                )
                state = self.store.put_directory(f"{prefix}/states/step-{step}", state_dir)
            except BaseException:
                # a checkpoint is the adapter and its state: without the state (a full disk,
                # a halt) the adapter alone is never announced, so it is not kept either
                self.store.delete(stored.uri)
                raise
        self.last_state_uri = state.uri
        self.last_checkpoint_step = step
        self.report(
            WorkerCheckpoint(
                step=step,
                epoch=epoch,
                train_loss=train_loss,
                validation_loss=validation_loss,
                tokens_seen=position.tokens_seen,
                artifact_uri=stored.uri,
                sha256=digest,
                size_bytes=stored.size_bytes,
                state_uri=state.uri,
                is_final=stop_reason is not None,
                elapsed_seconds=position.elapsed_seconds,
                stop_reason=stop_reason,
                tokenizer_fingerprint=self.data.tokenizer_fingerprint,
            )
        )


def read_back(losses: list[torch.Tensor]) -> list[float]:
    """Scalar tensors as floats, in one device-to-host copy."""
    return [float(value) for value in torch.stack(losses).tolist()]


def _device_type(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def release_memory(device: torch.device) -> None:
    """Collect what a failed session left (its model, optimizer, batches) and hand cached
    CUDA blocks back. Call it outside any ``except`` block: while an exception is being
    handled, its traceback keeps the frames of the failed step, and their tensors, alive."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _token_budget(budget: int, micro_batch_size: int, batch_size: int) -> int:
    """The micro-batch token budget, shrunk as far as an earlier OOM retry shrank the
    micro-batch (the supervisor hands the retried size on to later attempts)."""
    if budget and 0 < micro_batch_size < batch_size:
        return max(1, budget * micro_batch_size // batch_size)
    return budget


def run_training(
    plan: WorkerPlan,
    report: Report,
    signals: StopSignals,
    group: DataParallelGroup = SOLO,
) -> WorkerFinished:
    """Train as ``plan`` says, reporting through ``report``; returns the finishing message.
    With a ``group`` of several ranks this process is one of them (see :mod:`.distributed`).

    Out of memory: retried once (if the plan allows) from the last checkpoint written, with
    half the micro-batch; the effective batch stays the same. Not across ranks: there the
    attempt fails and the job resumes from its last checkpoint. Raises
    :class:`TrainingFailure` with the reason for everything the contracts name,
    :class:`TrainingHalted` on a halt.
    """
    device = resolve_device(group.device_of(plan.device))
    if plan.cpu_threads > 0:
        torch.set_num_threads(plan.cpu_threads)
    hp = resolve_for_device(plan.hyperparameters, plan.task_type, cuda=device.type == "cuda")
    if hp.precision is Precision.FP16 and device.type != "cuda":
        raise TrainingFailure(FailureReason.INTERNAL, "fp16 precision needs a CUDA device")
    try:
        check_model_unchanged(plan)
        data = prepare_data(plan, int(hp.max_seq_length))
    except ModelRefused as error:
        raise TrainingFailure(FailureReason.MODEL_REFUSED, str(error)) from error
    except ModelLoadFailed as error:
        raise TrainingFailure(FailureReason.MODEL_LOAD_FAILED, str(error)) from error
    except DataUnavailable as error:
        raise TrainingFailure(FailureReason.DATA_UNAVAILABLE, str(error)) from error
    store = artifact_store_from_uri(
        plan.artifact_root, s3_endpoint_url=plan.artifact_s3_endpoint_url or None
    )
    micro = plan.micro_batch_size or int(hp.batch_size)
    budget = _token_budget(plan.micro_batch_tokens, micro, int(hp.batch_size))
    resume_uri = plan.resume_state_uri
    retried = False
    while True:
        session: TrainingSession | None = None
        try:
            session = TrainingSession(
                plan,
                hp,
                data,
                device,
                micro_batch_size=micro,
                report=report,
                signals=signals,
                store=store,
                group=group,
                micro_batch_tokens=budget,
            )
            return session.run(resume_uri)
        except torch.OutOfMemoryError as error:
            message = str(error).splitlines()[0]
            resume_uri = (session.last_state_uri if session else "") or resume_uri
            resume_step = session.last_checkpoint_step if session else 0
        except (ModelLoadFailed, ModelRefused) as error:
            raise TrainingFailure(FailureReason.MODEL_LOAD_FAILED, str(error)) from error
        # Out of memory, and out of the handler: only now is the error gone, and with it the
        # traceback whose frames still held the failed step's batch and activations.
        session = None
        release_memory(device)
        if retried or not plan.allow_oom_retry or micro <= 1 or group.distributed:
            raise TrainingFailure(
                FailureReason.OUT_OF_MEMORY,
                f"out of memory with a micro-batch of {micro} examples: {message}",
            ) from None
        retried = True
        micro = (micro + 1) // 2
        budget = (budget + 1) // 2
        examples_per_step = int(hp.batch_size) * int(hp.gradient_accumulation_steps)
        report(
            WorkerOomRetry(
                micro_batch_size=micro,
                accumulation_steps=math.ceil(examples_per_step / micro),
                resume_step=max(0, resume_step),
                message=message,
            )
        )
        log.warning(
            "out of memory; retrying with a smaller micro-batch", extra={"micro_batch": micro}
        )
