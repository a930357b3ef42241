"""The ``tuneline`` command line."""
