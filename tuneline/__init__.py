"""Tuneline: the generated v1 contracts (``tuneline.<service>.v1``), the CLI and dev tooling.

The runtime shared by every service lives in the top-level ``shared`` package and the services
themselves in ``services``; this package holds what clients and operators touch.
"""
