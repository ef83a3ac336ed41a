"""The `colonies` command line."""
