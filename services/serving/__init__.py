"""The serving service: the reference consumer of ``production``.

It follows each model's ``production`` alias (ModelPromoted / ModelRolledBack on Kafka, WatchAlias
as the catch-up and fallback), loads exactly the announced artifact after verifying it, swaps
atomically, answers Predict / Generate, takes labelled feedback and reports live quality counts
to the registry — which closes the alert → rollback loop on real traffic.

Shape (DESIGN.md section 6): ``domain`` (plain rules: releases, swaps, feedback accounting),
``handlers`` (one function per command or event), ``adapters`` (torch engine, artifact fetch,
registry client, metrics, protos), ``entrypoints`` (gRPC servicer, Kafka subscriptions, alias
watcher, live-quality reporter, ``main``) and ``bootstrap`` (wires real adapters).
"""
