"""Statistics for decisions about models: pure Python and numpy, no I/O.

One decision rule, used by the evaluator's regression gate and by the registry alike:

* :mod:`.paired` — a paired difference (candidate - baseline on the same examples) with its
  test at any margin: the score test of Tango for 0/1 outcomes, a normal test with a bootstrap
  standard error for everything else;
* :mod:`.multiple` — Holm's weighted step-down procedure (family-wise error control);
* :mod:`.decision` — the rule itself: per gated difference, REGRESSED when a drop beyond the
  tolerance is shown at the family-wise level, WITHIN_TOLERANCE when non-inferiority is shown,
  INCONCLUSIVE otherwise, each with its interval, its minimum detectable drop and why;
* :mod:`.sequential` — an always-valid confidence sequence for a success rate reported in
  batches (live quality), which may be looked at after every report.
"""
