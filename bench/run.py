"""The benchmark suite of issue 16: each goal beside the figure measured for it, in one run.

    python bench/run.py                   # every area (about 10 minutes on a 2-core machine)
    python bench/run.py --quick           # every area, short (about 3 minutes)
    python bench/run.py --only throughput,idle --idle-clients 5000
    python bench/run.py --markdown > perf.md   # the README's performance section on stdout

Run on demand, never as a test: the figures depend on the machine and on what else runs on it (the
load average is printed with each area). Ratios divide measurements of the same run. All traffic
stays on 127.0.0.1, every part is bounded in time, and everything started is stopped.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import demo_time, footprint, idle, instructions, invoke, machine, startup, throughput
from bench.procs import bench_environment
from bench.report import WIDTH, Area, render_markdown, render_summary, render_text

AREAS = ("throughput", "idle", "startup", "footprint", "invoke", "demo", "instructions")


@dataclass(frozen=True)
class Settings:
    seconds: int
    clients: tuple[int, ...]
    tls_clients: tuple[int, ...]
    repeat: int
    scale: int
    profile: Path | None
    idle_clients: int
    runs: int
    invokes: int
    cold_starts: int
    demo_invocations: int
    transactions: int


def _settings(args: argparse.Namespace) -> Settings:
    quick = args.quick
    return Settings(
        seconds=args.seconds or (3 if quick else 6),
        clients=_numbers(args.clients or ("10" if quick else "10,50")),
        tls_clients=_numbers(args.tls_clients or ("10" if quick else "10,50")),
        repeat=args.repeat,
        scale=1 if quick else 10,
        profile=args.profile,
        idle_clients=args.idle_clients or (1000 if quick else 20_000),
        runs=args.runs or (1 if quick else 3),
        invokes=args.invokes or (50 if quick else 200),
        cold_starts=2 if quick else 5,
        demo_invocations=args.demo_invocations or (100 if quick else 500),
        transactions=args.transactions or (200 if quick else instructions.COUNT),
    )


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Measure the kit against the goals of issue 16; print each figure beside its goal.",
    )
    parser.add_argument("--only", metavar="AREAS", help=f"comma-separated, from: {','.join(AREAS)}")
    parser.add_argument("--quick", action="store_true", help="short measurements (a smoke run of every area)")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the README's performance section (Markdown) on stdout; the text goes to stderr",
    )
    group = parser.add_argument_group("1. throughput")
    group.add_argument("--seconds", type=int, help="pgbench -T per run (default 6; quick 3)")
    group.add_argument("--clients", help="pgbench clients per row (default 10,50; quick 10)")
    group.add_argument("--tls-clients", help="clients of the TLS rows (default 10,50; quick 10)")
    group.add_argument(
        "--repeat", type=int, default=1, help="runs per target and row, median taken (default 1)"
    )
    group.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the plain emulator under cProfile, write its stats to FILE and list its top functions "
        "(its figures are then not judged)",
    )
    group = parser.add_argument_group("other areas")
    group.add_argument(
        "--idle-clients", type=int, help="2. idle clients per kind (default 20000; quick 1000)"
    )
    group.add_argument("--runs", type=int, help="3. start-up runs (default 3; quick 1)")
    group.add_argument("--invokes", type=int, help="5. warm invokes per way (default 200; quick 50)")
    group.add_argument(
        "--demo-invocations", type=int, help="6. the demo's invocations (default 500; quick 100)"
    )
    group.add_argument(
        "--transactions",
        type=int,
        help="7. transactions counted per pooler and row under callgrind (default 1000; quick 200)",
    )
    return parser


def _areas(settings: Settings) -> dict[str, Callable[[], Area]]:
    return {
        "throughput": lambda: throughput.run(
            throughput.Options(
                seconds=settings.seconds,
                clients=settings.clients,
                tls_clients=settings.tls_clients,
                repeat=settings.repeat,
                scale=settings.scale,
                profile=settings.profile,
            )
        ),
        "idle": lambda: idle.run(settings.idle_clients),
        "startup": lambda: startup.run(settings.runs),
        "footprint": footprint.run,
        "invoke": lambda: invoke.run(settings.invokes, settings.cold_starts),
        "demo": lambda: demo_time.run(settings.demo_invocations),
        "instructions": lambda: instructions.run(settings.transactions),
    }


def _run_area(key: str, measure: Callable[[], Area], out: TextIO) -> Area:
    load_before = machine.load_average()
    started = time.monotonic()
    print(f"-- {key}: started (load average {load_before})", file=sys.stderr, flush=True)
    try:
        area = measure()
    except Exception as exc:  # noqa: BLE001 - one area failing must not hide the others' figures
        traceback.print_exc()
        area = Area(key, key, error=f"{type(exc).__name__}: {exc}")
    area.seconds = time.monotonic() - started
    area.load_before = load_before
    area.load_after = machine.load_average()
    print("\n" + render_text(area), file=out, flush=True)
    return area


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    chosen = AREAS if not args.only else tuple(part.strip() for part in args.only.split(",") if part.strip())
    unknown = sorted(set(chosen) - set(AREAS))
    if unknown:
        print(f"error: no area {', '.join(unknown)}; the areas are {', '.join(AREAS)}", file=sys.stderr)
        return 2
    settings = _settings(args)
    # Every process the benchmark starts (the proxies of the stacks it runs in-process too) runs this
    # checkout's kit, as this process does, not another copy that the interpreter has installed.
    os.environ["PYTHONPATH"] = bench_environment()["PYTHONPATH"]
    # With --markdown, stdout carries only the Markdown (for a file); everything else goes to stderr.
    out = sys.stderr if args.markdown else sys.stdout
    described = machine.describe()
    width = max(len(name) for name, _ in described)
    for name, value in described:
        print(
            textwrap.fill(f"{name:>{width}}: {value}", WIDTH, subsequent_indent=" " * (width + 2)), file=out
        )
    caveat = machine.under_load()
    if caveat:
        print("\n" + textwrap.fill(f"!! {caveat}", WIDTH, subsequent_indent="   "), file=out)
    measures = _areas(settings)
    areas = [_run_area(key, measures[key], out) for key in AREAS if key in chosen]
    print("\n" + render_summary(areas), file=out, flush=True)
    if args.markdown:
        command = "python bench/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        print(render_markdown(described, areas, command.strip(), caveat=caveat), end="")
    return 1 if any(area.error for area in areas) else 0


if __name__ == "__main__":
    raise SystemExit(main())
