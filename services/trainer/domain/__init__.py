"""The trainer service's domain: plain dataclasses and rules, no grpc, kafka, torch or SQL.

* :mod:`.config`: a job's configuration, its validation and defaults;
* :mod:`.jobs`: a job's life (states, failure and stop reasons), progress, checkpoints, lineage,
  and training policies;
* :mod:`.training_rules`: learning-rate schedule, early stopping, checkpoint retention;
* :mod:`.costs` and :mod:`.estimates`: cost, budgets, and what a job is expected to cost;
* :mod:`.launch`: device slots, sharding, the Kubernetes launch;
* :mod:`.worker_messages`: the plan a worker runs and the messages it sends back;
* :mod:`.jsonable`: domain values to and from JSON-compatible data.

Import from the module that defines a name; this package re-exports nothing.
"""
