"""`python -m colonies_es.cli` runs the `colonies` command (used by tests and scripts)."""

from colonies_es.cli.app import main

main()
