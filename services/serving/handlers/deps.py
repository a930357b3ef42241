"""What the serving handlers need, as ports the adapters implement (fakes in unit tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from services.serving.adapters.metrics import ServingMetrics
from services.serving.domain import (
    FeedbackLedger,
    LiveQualityBatch,
    PredictionMemory,
    Release,
    ReportOutcome,
    ServingTable,
)
from services.serving.domain.releases import InferenceModel


class ArtifactFetcher(Protocol):
    def fetch(self, uri: str, sha256: str) -> Path:
        """A local folder holding exactly the artifact at ``uri`` whose digest is ``sha256``;
        :class:`~services.serving.domain.ReleaseRefused` otherwise."""
        ...


class ModelLoader(Protocol):
    def load(self, folder: Path, release: Release) -> InferenceModel:
        """The checkpoint in ``folder`` ready to answer; ``ReleaseRefused`` when it cannot."""
        ...


class LiveQualitySink(Protocol):
    def report(self, batch: LiveQualityBatch) -> ReportOutcome: ...


@dataclass
class ServingDeps:
    table: ServingTable
    predictions: PredictionMemory
    ledger: FeedbackLedger
    fetcher: ArtifactFetcher
    loader: ModelLoader
    sink: LiveQualitySink
    metrics: ServingMetrics
    clock: Callable[[], datetime]
    new_id: Callable[[], str]
    keep_previous_model: bool = True
    max_new_tokens: int = 64
    success_threshold: float = 0.5
    report_every_feedbacks: int = 50
    #: Called when ``report_every_feedbacks`` outcomes wait (wakes the reporter).
    report_due: Callable[[], None] = lambda: None
