"""`python -m emulator check-sql`: the static pinning check as a CI gate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from emulator.tools.sqlcheck.check import CLEAN, ERROR, check_paths
from emulator.tools.sqlcheck.findings import RULES, pins
from emulator.tools.sqlcheck.formats import FORMATS, render
from emulator.tools.sqlcheck.walk import MissingPath

_EPILOG = f"""\
what is read:
  .py files (string literals that look like SQL, each sent as one query) and .sql files (each
  statement, as psql sends them). A directory is listed by git where it is in a work tree
  (tracked and untracked files, without what git ignores); elsewhere its .gitignore files are
  read. Virtual environments (a pyvenv.cfg inside), site-packages, node_modules, .git, .tox,
  .nox, __pycache__, build, dist, .terraform, .aws-sam and ruff's other default exclusions are
  skipped below the paths you name; a file you name is always checked.

suppressing a finding, on a line of the statement (a Python string: any line it spans; a .sql
statement: also the lines above it, after the previous statement), with a reason:
  cur.execute("SET search_path TO app")  # rds-proxy: allow set -- one schema per tenant
  -- rds-proxy: allow listen -- the notifier connects directly, not through the proxy
  rules: {", ".join(rule for rule in RULES if pins(rule))}
  A suppression without a reason or with an unknown rule is a finding itself
  (invalid_suppression) and allows nothing: the statement is reported too. One that nothing it
  covers triggers is also a finding (unused_suppression).

exit codes:
  0  nothing would pin (suppressed findings included)
  1  findings: a statement would pin, a Python file could not be parsed or a .sql file leaves a
     quote or comment open (syntax_error), or a suppression comment is invalid or unused
  2  usage error or the check could not be done: a path that does not exist, an unreadable file
"""


def add_parser(commands: Any) -> None:
    check = commands.add_parser(
        "check-sql",
        help="warn which SQL in your code would make RDS Proxy pin, why, and what to do instead",
        description="Scan .py and .sql files for statements that pin a session in RDS Proxy for "
        "PostgreSQL, with RDS Proxy's reason and digest and what to do instead.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    check.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text (PATH:LINE:COLUMN: RULE message, for people), json (for scripts) or sarif (SARIF "
        "2.1.0, for code scanning such as GitHub's); default: %(default)s",
    )
    check.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="skip files and directories matching this gitignore-style pattern, relative to the "
        "current directory (repeatable, or comma-separated), e.g. --exclude 'tests/fixtures/,*_pb2.py'",
    )
    check.add_argument(
        "--exit-zero",
        "--warn-only",
        dest="exit_zero",
        action="store_true",
        help="exit 0 even when there are findings (2 still means the check could not be done)",
    )


def run(args: argparse.Namespace) -> int:
    patterns = [
        pattern.strip() for option in args.exclude for pattern in option.split(",") if pattern.strip()
    ]
    try:
        result = check_paths(args.paths, patterns)
    except MissingPath as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ERROR
    sys.stdout.write(render(result, args.format))
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    if args.exit_zero and result.exit_code != ERROR:
        return CLEAN
    return result.exit_code
