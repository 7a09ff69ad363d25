import sys

if sys.argv[1:2] == ["up"] and not {"-h", "--help"} & set(sys.argv):
    # moto's process starts first: its imports and warm-up run on the other core while this one
    # imports the kit (the stack adopts it; see emulator.stack.moto_process).
    from emulator.stack.moto_process import prestart

    prestart()

from emulator.cli import main

raise SystemExit(main())
