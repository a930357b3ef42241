"""Reports over a model's history: the scorecard of accuracy, loss, regressions and cost.

``scorecard`` is the pure computation over plain dataclasses; ``collector`` gathers those
dataclasses from the services' public gRPC APIs through the SDK; ``page`` renders the
self-contained HTML page. The ``tuneline report`` command puts them together.
"""
