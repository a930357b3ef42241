"""The evaluator service's domain: plain dataclasses and rules, no grpc, kafka, torch or SQL.

* :mod:`.statistics` — the paired tests (McNemar, paired bootstrap);
* :mod:`.outcomes` — per-example results of a model on an evaluation set, and the metrics;
* :mod:`.gate` — the regression gate: comparisons, outcomes and the verdict;
* :mod:`.evaluation` — evaluations, baselines, policies and names.
"""
