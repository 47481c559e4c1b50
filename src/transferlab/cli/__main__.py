"""`python -m transferlab.cli ...` runs the command line (same as the `transferlab` script)."""

from transferlab.cli import main

main()
