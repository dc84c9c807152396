"""The ``compembed`` command line."""
