"""`python -m emulator.dbendpoint`: the database's endpoints alone, as the stack starts them (main.py)."""

import argparse

from emulator.dbendpoint.main import add_arguments, command

parser = argparse.ArgumentParser(
    prog="python -m emulator.dbendpoint", description="The RDS database endpoints' local twin."
)
add_arguments(parser)
raise SystemExit(command(parser.parse_args()))
