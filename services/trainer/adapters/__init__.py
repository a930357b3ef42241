"""I/O of the trainer service: its SQL repository and other adapters."""
