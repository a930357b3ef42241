"""The evaluator service's domain: plain dataclasses and rules, no grpc, kafka, torch or SQL.

* :mod:`.statistics` — paired-bootstrap resampling (the tests themselves are in
  ``shared.stats``);
* :mod:`.outcomes` — per-example results of a model on an evaluation set, and the metrics;
* :mod:`.gate` — the regression gate: comparisons, outcomes and the verdict;
* :mod:`.evaluation` — evaluations, baselines, policies and names;
* :mod:`.events` — what other services' events tell the evaluator (a ready checkpoint, where
  splits' and dataset versions' rows are).
"""
