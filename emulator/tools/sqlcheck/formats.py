"""check-sql's output: text for people, JSON for scripts, SARIF 2.1.0 for code-scanning UIs."""

from __future__ import annotations

import json
import urllib.parse
from importlib import metadata
from pathlib import Path
from typing import Any

from emulator.tools.sqlcheck.check import CheckResult
from emulator.tools.sqlcheck.findings import RULES, Finding, Suppressed, pins

FORMATS = ("text", "json", "sarif")
TOOL = "rds-proxy-twin check-sql"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_SOURCE_ROOT = "%SRCROOT%"  # SARIF's customary base for paths relative to where the check ran


def render(result: CheckResult, output_format: str) -> str:
    if output_format == "json":
        return json.dumps(to_json(result), indent=2) + "\n"
    if output_format == "sarif":
        return json.dumps(to_sarif(result, Path.cwd()), indent=2) + "\n"
    return to_text(result)


def to_text(result: CheckResult) -> str:
    """Like ruff's: PATH:LINE:COLUMN: RULE message, with RDS Proxy's reason and the fix under a pin."""
    lines = []
    for finding in result.findings:
        lines.append(f"{finding.path}:{finding.line}:{finding.column}: {finding.rule}: {finding.message}")
        if pins(finding.rule):
            lines.append(f"    why: {finding.reason}")
        lines.append(f"    fix: {finding.fix}")
    lines.append(_summary(result))
    return "\n".join(lines) + "\n"


def _summary(result: CheckResult) -> str:
    pinned = sum(1 for finding in result.findings if pins(finding.rule))
    others = len(result.findings) - pinned
    files = f"{result.files} file" + ("" if result.files == 1 else "s")
    if pinned:
        verdict = f"{pinned} statement(s) would pin the session in RDS Proxy"
    else:
        verdict = "no statement would pin the session in RDS Proxy"
    extras = []
    if others:
        extras.append(f"{others} other problem(s) above")
    if result.suppressed:
        extras.append(f"{len(result.suppressed)} allowed by a suppression comment")
    if result.errors:
        extras.append(f"{len(result.errors)} file(s) could not be read")
    return f"Checked {files}: {verdict}" + (f" ({'; '.join(extras)})" if extras else "") + "."


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "path": str(finding.path),
        "line": finding.line,
        "column": finding.column,
        "rule": finding.rule,
        "message": finding.message,
        "sql": finding.sql or None,
        "reason": finding.reason or None,
        "fix": finding.fix,
    }


def _suppressed_json(suppressed: Suppressed) -> dict[str, Any]:
    return {
        **_finding_json(suppressed.finding),
        "suppression": {"line": suppressed.line, "reason": suppressed.reason},
    }


def to_json(result: CheckResult) -> dict[str, Any]:
    return {
        "files_checked": result.files,
        "findings": [_finding_json(finding) for finding in result.findings],
        "suppressed": [_suppressed_json(suppressed) for suppressed in result.suppressed],
        "errors": result.errors,
    }


def _version() -> str:
    try:
        return metadata.version("rds-proxy-local-twin")
    except metadata.PackageNotFoundError:  # run from a checkout without installing it
        return "0"


def to_sarif(result: CheckResult, base: Path) -> dict[str, Any]:
    """One run; paths relative to base (the working directory) where they are under it, as code
    scanning resolves them against the checkout; every rule described, each result naming its own."""
    index = {rule: position for position, rule in enumerate(RULES)}
    results = [_sarif_result(finding, index, base) for finding in result.findings]
    for suppressed in result.suppressed:
        allowed = _sarif_result(suppressed.finding, index, base)
        allowed["suppressions"] = [{"kind": "inSource", "justification": suppressed.reason}]
        results.append(allowed)
    invocation: dict[str, Any] = {"executionSuccessful": not result.errors}
    if result.errors:
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": error}} for error in result.errors
        ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": TOOL,
                        "version": _version(),
                        "rules": [_sarif_rule(rule) for rule in RULES],
                    }
                },
                "originalUriBaseIds": {_SOURCE_ROOT: {"uri": base.absolute().as_uri() + "/"}},
                "invocations": [invocation],
                "results": results,
            }
        ],
    }


def _sarif_rule(rule: str) -> dict[str, Any]:
    described = RULES[rule]
    return {
        "id": rule,
        "shortDescription": {"text": described.summary},
        "help": {"text": described.fix},
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["rds-proxy", "pinning" if pins(rule) else "check-sql"]},
    }


def _sarif_result(finding: Finding, index: dict[str, int], base: Path) -> dict[str, Any]:
    absolute = finding.path.absolute()
    try:
        relative = absolute.relative_to(base.absolute()).as_posix()
        location = {"uri": urllib.parse.quote(relative), "uriBaseId": _SOURCE_ROOT}
    except ValueError:
        location = {"uri": absolute.as_uri()}
    text = finding.message
    if pins(finding.rule):
        text += f". RDS Proxy: {finding.reason} Fix: {finding.fix}."
    return {
        "ruleId": finding.rule,
        "ruleIndex": index[finding.rule],
        "level": "error",
        "message": {"text": text},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": location,
                    "region": {"startLine": finding.line, "startColumn": finding.column},
                }
            }
        ],
    }
