"""The dataset service's Prometheus metrics, on the registry the runtime passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.dataset.domain.label_audit import DatasetAudit
from services.dataset.domain.parent_shift import ParentShiftStatus
from services.dataset.domain.reports import Finding

#: From a small upload answered in milliseconds to a gigabyte taking minutes.
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class DatasetMetrics:
    """What ingestion did: bytes and rows, findings by rule, outcomes, and how long it took.

    ``source`` is ``upload`` or ``import``. ``outcome`` is ``created`` (a new version),
    ``unchanged`` (the content already was a version), ``rejected``, ``validated``
    (``validate_only``) or ``aborted`` (the client went away mid-upload).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.bytes = Counter(
            "tuneline_dataset_ingest_bytes_total",
            "Bytes of dataset content received, as sent (uploads and imports).",
            ("source",),
            registry=registry,
        )
        self.rows = Counter(
            "tuneline_dataset_ingest_rows_total",
            "Rows that passed validation, by the outcome of their upload.",
            ("source", "outcome"),
            registry=registry,
        )
        self.findings = Counter(
            "tuneline_dataset_validation_findings_total",
            "Validation findings (occurrences), by rule and severity.",
            ("rule", "severity"),
            registry=registry,
        )
        self.ingests = Counter(
            "tuneline_dataset_ingests_total",
            "Uploads and imports, by outcome.",
            ("source", "outcome"),
            registry=registry,
        )
        self.duration = Histogram(
            "tuneline_dataset_ingest_duration_seconds",
            "Time from the first byte to the answer of an upload or import.",
            ("source", "outcome"),
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )

        self.audits = Counter(
            "tuneline_dataset_label_audits_total",
            "Finished label audits of versions, by verdict.",
            ("verdict",),
            registry=registry,
        )
        self.audit_duration = Histogram(
            "tuneline_dataset_label_audit_duration_seconds",
            "Time one label audit took (reading rows, embeddings, out-of-fold fits, cleanlab).",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.label_noise = Gauge(
            "tuneline_dataset_label_noise_rate",
            "Estimated label noise rate of the dataset's latest audited version.",
            ("dataset",),
            registry=registry,
        )
        self.suspected_rows = Gauge(
            "tuneline_dataset_label_audit_suspected_rows",
            "Rows suspected of a wrong label in the dataset's latest audited version.",
            ("dataset",),
            registry=registry,
        )
        self.parent_shift_effect = Gauge(
            "tuneline_dataset_parent_shift_effect_size",
            "AUC - 0.5 of the classifier two-sample test between the dataset's latest audited "
            "version's texts and its parent's (0: indistinguishable; report only).",
            ("dataset",),
            registry=registry,
        )
        self.parent_shift_p_value = Gauge(
            "tuneline_dataset_parent_shift_p_value",
            "Permutation p-value of that test.",
            ("dataset",),
            registry=registry,
        )
        self.parent_shifts = Counter(
            "tuneline_dataset_parent_shifts_total",
            "Shift tests of audited versions against their parents, by status.",
            ("status",),
            registry=registry,
        )

    def audited(self, audit: DatasetAudit) -> None:
        self.audits.labels(audit.verdict.value).inc()
        dataset = f"datasets/{audit.dataset_id}"
        if audit.findings is not None:
            self.label_noise.labels(dataset).set(audit.findings.noise_rate)
            self.suspected_rows.labels(dataset).set(audit.findings.suspected_count)
        shift = audit.parent_shift
        if shift is not None:
            self.parent_shifts.labels(shift.status.value).inc()
            if shift.status is not ParentShiftStatus.SKIPPED:
                self.parent_shift_effect.labels(dataset).set(shift.effect_size)
                self.parent_shift_p_value.labels(dataset).set(shift.p_value)

    def ingested(
        self,
        *,
        source: str,
        outcome: str,
        rows: int,
        findings: tuple[Finding, ...],
        seconds: float,
    ) -> None:
        self.rows.labels(source, outcome).inc(rows)
        for finding in findings:
            self.findings.labels(finding.rule.value, finding.severity.value).inc(finding.count)
        self.ingests.labels(source, outcome).inc()
        self.duration.labels(source, outcome).observe(seconds)
