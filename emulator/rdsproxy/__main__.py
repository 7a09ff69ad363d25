"""`python -m emulator.rdsproxy`: the proxy alone, as the stack starts it (see main.py)."""

import argparse

from emulator.rdsproxy.main import add_arguments, command

parser = argparse.ArgumentParser(prog="python -m emulator.rdsproxy", description="The RDS Proxy emulator.")
add_arguments(parser)
raise SystemExit(command(parser.parse_args()))
