"""I/O of the registry service: its SQL repository and other adapters."""
