"""`python -m transferlab ...` runs the command line (same as the `transferlab` script)."""

from transferlab.cli import main

main()
