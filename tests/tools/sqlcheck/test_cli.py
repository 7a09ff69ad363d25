"""`check-sql` as a CI gate: its exit codes, its text output and its help."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.rdsproxy.protocol.pinning import REASON_SETTINGS
from emulator.tools.sqlcheck.cli import add_parser, run

pytestmark = pytest.mark.unit


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rds-proxy-twin")
    add_parser(parser.add_subparsers())
    return parser


def _check_sql(*argv: str) -> int:
    return run(_parser().parse_args(["check-sql", *argv]))


def test_exit_0_when_nothing_would_pin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "handler.py").write_text('Q = "SELECT 1"\n')
    assert _check_sql(str(tmp_path)) == 0
    assert capsys.readouterr().out == "Checked 1 file: no statement would pin the session in RDS Proxy.\n"


def test_exit_1_with_each_finding_as_path_line_column_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "handler.py").write_text(
        'Q = "LISTEN jobs"\nS = "SET a = 1"  # rds-proxy: allow set -- why\n'
    )
    monkeypatch.chdir(tmp_path)
    assert _check_sql(".") == 1
    assert capsys.readouterr().out.splitlines() == [
        "handler.py:1:5: listen: pins the session: LISTEN jobs",
        f"    why: {REASON_SETTINGS.format(digest='listen jobs')}",
        "    fix: listen on a direct database connection, not through the proxy",
        "Checked 1 file: 1 statement(s) would pin the session in RDS Proxy "
        "(1 allowed by a suppression comment).",
    ]


def test_exit_1_for_a_syntax_error_or_a_bad_suppression_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.py").write_text("def broken(:\n")
    (tmp_path / "stale.py").write_text('Q = "SELECT 1"  # rds-proxy: allow set -- no longer needed\n')
    assert _check_sql(str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "broken.py:1:12: syntax_error: could not parse: invalid syntax (line 1)" in out
    assert "stale.py:1:19: unused_suppression:" in out
    assert out.endswith("no statement would pin the session in RDS Proxy (2 other problem(s) above).\n")


def test_a_suppression_without_a_reason_counts_as_findings_not_as_allowed_in_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app.py").write_text('cur.execute("LISTEN jobs")  # rds-proxy: allow listen\n')
    monkeypatch.chdir(tmp_path)
    assert _check_sql(".") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "app.py:1:13: listen: pins the session: LISTEN jobs"
    assert out[3].startswith("app.py:1:31: invalid_suppression: suppression gives no reason")
    assert out[-1] == (
        "Checked 1 file: 1 statement(s) would pin the session in RDS Proxy (1 other problem(s) above)."
    )
    assert _check_sql("--format", "json", ".") == 1
    document = json.loads(capsys.readouterr().out)
    assert [finding["rule"] for finding in document["findings"]] == ["listen", "invalid_suppression"]
    assert document["suppressed"] == []


@pytest.mark.parametrize("output_format", ["json", "sarif"])
def test_json_and_sarif_are_the_whole_output_with_the_same_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], output_format: str
) -> None:
    (tmp_path / "handler.py").write_text('Q = "LISTEN jobs"\n')
    assert _check_sql("--format", output_format, str(tmp_path)) == 1
    document = json.loads(capsys.readouterr().out)
    findings = document["findings"] if output_format == "json" else document["runs"][0]["results"]
    assert len(findings) == 1


def test_exit_zero_turns_findings_into_warnings_but_not_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "handler.py").write_text('Q = "LISTEN jobs"\n')
    assert _check_sql("--exit-zero", str(tmp_path)) == 0
    assert _check_sql("--warn-only", str(tmp_path)) == 0
    assert _check_sql("--exit-zero", str(tmp_path / "missing")) == 2


def test_exit_2_for_a_path_that_does_not_exist_and_nothing_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "handler.py").write_text('Q = "LISTEN jobs"\n')
    assert _check_sql(str(tmp_path), str(tmp_path / "hanlder")) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"error: {tmp_path / 'hanlder'}: no such file or directory\n")


def test_exclude_takes_comma_separated_and_repeated_patterns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a.py", "b.py", "c.py", "d.py"):
        (tmp_path / name).write_text('Q = "LISTEN jobs"\n')
    monkeypatch.chdir(tmp_path)
    assert _check_sql(".", "--exclude", "a.py, b.py", "--exclude", "c.py") == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith("Checked 1 file:")


def test_the_help_documents_exit_codes_formats_and_suppressions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        _parser().parse_args(["check-sql", "--help"])
    text = capsys.readouterr().out
    for expected in (
        "0  nothing would pin",
        "1  findings",
        "2  usage error",
        "--format {text,json,sarif}",
        "rds-proxy: allow set -- ",
        "--exclude PATTERN",
        "pyvenv.cfg",
    ):
        assert expected in text


def test_from_another_directory_a_project_fails_the_gate_and_a_typo_is_an_error(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".venv/lib/python3.11/site-packages/lib").mkdir(parents=True)
    (project / ".venv/pyvenv.cfg").write_text("home = /usr/bin\n")
    (project / ".venv/lib/python3.11/site-packages/lib/x.py").write_text('Q = "SET a = 1"\n')
    (project / "migrations").mkdir()
    (project / "migrations/001.sql").write_text("CREATE TABLE t (id int);\nLISTEN t;\n")
    command = [sys.executable, "-m", "emulator", "check-sql"]
    found = subprocess.run([*command, "project"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert found.returncode == 1, found.stderr
    assert found.stdout.startswith("project/migrations/001.sql:2:1: listen: pins the session: LISTEN t\n")
    assert found.stdout.endswith("Checked 1 file: 1 statement(s) would pin the session in RDS Proxy.\n")
    typo = subprocess.run([*command, "projet"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert (typo.returncode, typo.stdout, typo.stderr) == (
        2,
        "",
        "error: projet: no such file or directory\n",
    )


@pytest.mark.parametrize(
    ("source", "options", "exit_code", "said"),
    [
        ('Q = "SELECT 1"\n', [], 0, "no statement would pin"),
        (
            'Q = "SET search_path TO app"  # rds-proxy: allow set -- one schema per tenant\n',
            [],
            0,
            "(1 allowed by a suppression comment)",
        ),
        ('Q = "LISTEN jobs"\n', ["--format", "sarif"], 1, '"ruleId": "listen"'),
        ('Q = "LISTEN jobs"\n', ["--format", "xml"], 2, "invalid choice: 'xml'"),
    ],
    ids=["clean", "suppressed", "findings-as-sarif", "usage-error"],
)
def test_the_real_command_exits_0_clean_1_findings_2_usage_error(
    tmp_path: Path, source: str, options: list[str], exit_code: int, said: str
) -> None:
    (tmp_path / "handler.py").write_text(source)
    done = subprocess.run(
        [sys.executable, "-m", "emulator", "check-sql", *options, "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    output = done.stdout + done.stderr
    assert (done.returncode, said in output) == (exit_code, True), output
