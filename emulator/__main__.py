"""`python -m emulator` and the `rds-proxy-twin` command."""

import sys


def main() -> int:
    if sys.argv[1:2] == ["up"] and not {"-h", "--help"} & set(sys.argv):
        # moto's process starts first: its imports and warm-up run on the other core while this one
        # imports the kit (the stack adopts it; see emulator.stack.moto_process).
        from emulator.stack.moto_process import prestart  # noqa: PLC0415 - before the kit's imports

        prestart()
    from emulator.cli import main as run  # noqa: PLC0415 - after moto's start

    return run()


if __name__ == "__main__":
    raise SystemExit(main())
