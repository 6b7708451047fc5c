"""`python -m repovault_cli` runs the rv command."""

from repovault_cli.main import cli

cli(prog_name="rv")
