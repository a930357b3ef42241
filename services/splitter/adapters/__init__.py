"""I/O of the splitter service: its SQL repository and other adapters."""
