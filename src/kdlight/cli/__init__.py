"""Command-line entry points: each parses its arguments, calls the library and sets the exit code."""
