"""I/O of the dataset service: its SQL repository and other adapters."""
