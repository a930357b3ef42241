"""The serving domain: releases and the atomic swap, predictions, feedback accounting.

Plain Python: no torch, gRPC, Kafka, SQL or generated code (``tests/unit/test_import_contracts``).
"""

from services.serving.domain.feedback import FeedbackLedger, LiveQualityBatch, ReportOutcome
from services.serving.domain.predictions import Prediction, PredictionMemory
from services.serving.domain.releases import (
    FollowDecision,
    Release,
    ReleaseRefused,
    ServedModel,
    ServingTable,
    fingerprint_differences,
)

__all__ = [
    "FeedbackLedger",
    "FollowDecision",
    "LiveQualityBatch",
    "Prediction",
    "PredictionMemory",
    "Release",
    "ReleaseRefused",
    "ReportOutcome",
    "ServedModel",
    "ServingTable",
    "fingerprint_differences",
]
