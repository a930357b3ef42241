"""The dataset service's domain: plain dataclasses and rules, no grpc, kafka, torch or SQL.

A *dataset* is a named, typed series of immutable *versions*. A version is content-addressed:
its id derives from the sha256 of the canonical content (see
``services.dataset.domain.validation``), so the same rows always give the same version. Every
upload or import produces a validation *report*, stored whether the content was accepted or
rejected.

Validation rules have stable ids (:class:`.rules.Rule`). Each has a default severity; a
dataset's :class:`.policy.SchemaPolicy` may override it, except for the rules in
:data:`.rules.ALWAYS_ERRORS`, which describe content that cannot become rows at all.

Split by subject (import from the modules; this package re-exports nothing):

* :mod:`.rules` — the validation rules and their severities;
* :mod:`.policy` — a dataset's schema policy and the service-wide value bounds;
* :mod:`.reports` — findings, validation reports and the lineage they record;
* :mod:`.datasets` — datasets, versions, version ids and artifact keys, interrupted uploads;
* :mod:`.churn` — label churn against the parent version;
* :mod:`.characters` — which characters count as text;
* :mod:`.fingerprints` — 64-bit input fingerprints and their index;
* :mod:`.near_duplicate_rows` — the ``near_duplicates`` check over a version's rows;
* :mod:`.parent_shift` — whether a version's texts shifted from its parent's;
* :mod:`.label_audit` — the label audit (confident learning) and its verdicts.

The task type is :class:`shared.task_types.TaskType`, the one every service uses.
"""
