"""I/O of the evaluator service: its SQL repository and other adapters."""
