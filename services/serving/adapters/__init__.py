"""Adapters of the serving service: torch engine, artifact fetch, registry, metrics, protos."""
