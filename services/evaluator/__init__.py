"""The evaluator service: scores checkpoints against a stored baseline.

Shape (DESIGN.md section 6): ``domain`` (plain rules), ``handlers`` (one function per command
or event), ``adapters`` (SQL repository and other I/O), ``entrypoints`` (gRPC servicer, Kafka
subscriptions, ``main``) and ``bootstrap`` (wires real adapters).
"""
