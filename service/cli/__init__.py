"""The ``samplerd`` command line: the argument parser (``main``) and the user commands."""
