"""check-sql's JSON for scripts and SARIF 2.1.0 for code-scanning UIs: the same findings as the text."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from emulator.tools.sqlcheck import check_paths
from emulator.tools.sqlcheck.check import CheckResult
from emulator.tools.sqlcheck.formats import SARIF_SCHEMA, render, to_json, to_sarif

pytestmark = pytest.mark.unit

HANDLER = """\
import db

db.run("LISTEN jobs")
db.run("SET search_path TO app")  # rds-proxy: allow set -- one schema per tenant
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CheckResult:
    (tmp_path / "app").mkdir()
    (tmp_path / "app/handler.py").write_text(HANDLER)
    (tmp_path / "app/broken.py").write_text("def broken(:\n")
    monkeypatch.chdir(tmp_path)
    return check_paths([Path("app")])


def test_json_holds_each_finding_with_its_place_rule_reason_and_fix(project: CheckResult) -> None:
    document = json.loads(render(project, "json"))
    assert document["files_checked"] == 2
    assert document["errors"] == []
    broken, listen = document["findings"]
    assert listen == {
        "path": "app/handler.py",
        "line": 3,
        "column": 8,
        "rule": "listen",
        "message": "pins the session: LISTEN jobs",
        "sql": "LISTEN jobs",
        "reason": listen["reason"],
        "fix": "listen on a direct database connection, not through the proxy",
    }
    assert listen["reason"].endswith('Digest: "listen jobs".')
    assert (broken["rule"], broken["line"], broken["sql"], broken["reason"]) == (
        "syntax_error",
        1,
        None,
        None,
    )


def test_json_lists_what_was_suppressed_and_why(project: CheckResult) -> None:
    [suppressed] = to_json(project)["suppressed"]
    assert (suppressed["rule"], suppressed["line"]) == ("set", 4)
    assert suppressed["suppression"] == {"line": 4, "reason": "one schema per tenant"}


def _closed(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_MESSAGE = {"type": "object", "anyOf": [{"required": ["text"]}, {"required": ["id"]}]}
_LEVEL = {"enum": ["none", "note", "warning", "error"]}
_TEXT = _closed(["text"], text={"type": "string"})  # multiformatMessageString

# The SARIF 2.1.0 schema's rules (its "required" lists, enums and minimums, by the definitions'
# names: sarifLog, run, tool, toolComponent, reportingDescriptor, invocation, notification, result,
# location, physicalLocation, artifactLocation, region, suppression) for what check-sql writes, and,
# marked "code scanning", what GitHub's code scanning also needs to show a result inline.
SARIF_SUBSET: dict[str, Any] = _closed(
    ["version", "runs"],
    **{"$schema": {"type": "string"}},
    version={"enum": ["2.1.0"]},
    runs={
        "type": "array",
        "minItems": 1,  # code scanning: one run per tool
        "items": _closed(
            ["tool", "results"],  # results: "must be present if a log file represents an actual scan"
            tool=_closed(
                ["driver"],
                driver=_closed(
                    ["name", "rules"],  # rules: code scanning shows their descriptions
                    name={"type": "string", "minLength": 1},
                    version={"type": "string"},
                    rules={
                        "type": "array",
                        "items": _closed(
                            ["id"],
                            id={"type": "string"},
                            shortDescription=_TEXT,
                            help=_TEXT,
                            defaultConfiguration=_closed([], level=_LEVEL),
                        ),
                    },
                ),
            ),
            originalUriBaseIds={
                "type": "object",
                "additionalProperties": _closed(["uri"], uri={"type": "string"}),
            },
            invocations={
                "type": "array",
                "items": _closed(
                    ["executionSuccessful"],
                    executionSuccessful={"type": "boolean"},
                    toolExecutionNotifications={
                        "type": "array",
                        "items": _closed(["message"], message=_MESSAGE, level=_LEVEL),
                    },
                ),
            },
            results={
                "type": "array",
                "items": _closed(
                    ["message", "ruleId", "locations"],  # ruleId, locations: code scanning
                    message=_MESSAGE,
                    ruleId={"type": "string"},
                    ruleIndex={"type": "integer", "minimum": -1},
                    level=_LEVEL,
                    locations={
                        "type": "array",
                        "minItems": 1,
                        "items": _closed(
                            ["physicalLocation"],  # code scanning
                            physicalLocation=_closed(
                                ["artifactLocation", "region"],  # region: code scanning
                                artifactLocation=_closed(
                                    ["uri"], uri={"type": "string"}, uriBaseId={"type": "string"}
                                ),
                                region=_closed(
                                    ["startLine"],  # code scanning
                                    startLine={"type": "integer", "minimum": 1},
                                    startColumn={"type": "integer", "minimum": 1},
                                ),
                            ),
                        ),
                    },
                    suppressions={
                        "type": "array",
                        "items": _closed(
                            ["kind"],
                            kind={"enum": ["inSource", "external"]},
                            justification={"type": "string"},
                        ),
                    },
                ),
            },
        ),
    },
)


def sarif_problems(log: dict[str, Any]) -> list[str]:
    """Where the log breaks SARIF_SUBSET, and what the schema cannot say: that each result's
    ruleIndex names its ruleId's rule and its uriBaseId is defined."""
    validator = jsonschema.Draft7Validator(SARIF_SUBSET)  # the SARIF schema is draft-07
    problems = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(log)
    ]
    for run in log.get("runs", []):
        rules = run.get("tool", {}).get("driver", {}).get("rules", [])
        for result in run.get("results", []):
            index = result.get("ruleIndex", -1)
            if index != -1 and not (0 <= index < len(rules) and rules[index]["id"] == result["ruleId"]):
                problems.append(f"ruleIndex {index} is not the rule {result['ruleId']}")
            for location in result.get("locations", []):
                base = location.get("physicalLocation", {}).get("artifactLocation", {}).get("uriBaseId")
                if base is not None and base not in run.get("originalUriBaseIds", {}):
                    problems.append(f"uriBaseId {base} is not in originalUriBaseIds")
    return sorted(problems)


def test_sarif_has_what_the_schema_and_code_scanning_require(project: CheckResult) -> None:
    log = json.loads(render(project, "sarif"))
    assert sarif_problems(log) == []
    assert log["$schema"] == SARIF_SCHEMA
    assert len(log["runs"][0]["results"]) == 3  # the pin, the syntax error and the suppressed pin


def test_the_sarif_check_would_catch_a_missing_or_wrong_field(project: CheckResult) -> None:
    broken = copy.deepcopy(to_sarif(project, Path.cwd()))
    run = broken["runs"][0]
    del run["tool"]["driver"]["name"]
    del run["results"][0]["locations"][0]["physicalLocation"]["region"]
    run["results"][1]["level"] = "fatal"
    run["results"][1]["ruleIndex"] += 1
    run["results"][2]["suppressions"][0]["kind"] = "inline"
    run["originalUriBaseIds"] = {}
    assert sarif_problems(broken) == [
        f"ruleIndex {run['results'][1]['ruleIndex']} is not the rule listen",
        "runs/0/results/0/locations/0/physicalLocation: 'region' is a required property",
        "runs/0/results/1/level: 'fatal' is not one of ['none', 'note', 'warning', 'error']",
        "runs/0/results/2/suppressions/0/kind: 'inline' is not one of ['inSource', 'external']",
        "runs/0/tool/driver: 'name' is a required property",
        "uriBaseId %SRCROOT% is not in originalUriBaseIds",
        "uriBaseId %SRCROOT% is not in originalUriBaseIds",
        "uriBaseId %SRCROOT% is not in originalUriBaseIds",
    ]


def test_sarif_places_each_result_relative_to_the_checkout_for_code_scanning(project: CheckResult) -> None:
    run = to_sarif(project, Path.cwd())["runs"][0]
    results = {result["ruleId"]: result for result in run["results"]}
    location = results["listen"]["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "app/handler.py", "uriBaseId": "%SRCROOT%"}
    assert location["region"] == {"startLine": 3, "startColumn": 8}
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == Path.cwd().as_uri() + "/"
    assert 'Digest: "listen jobs"' in results["listen"]["message"]["text"]
    assert results["syntax_error"]["level"] == "error"


def test_a_suppressed_finding_is_in_sarif_as_an_in_source_suppression_with_its_reason(
    project: CheckResult,
) -> None:
    [allowed] = [r for r in to_sarif(project, Path.cwd())["runs"][0]["results"] if "suppressions" in r]
    assert allowed["ruleId"] == "set"
    assert allowed["suppressions"] == [{"kind": "inSource", "justification": "one schema per tenant"}]


def test_sarif_describes_every_rule_with_its_fix(project: CheckResult) -> None:
    rules = {rule["id"]: rule for rule in to_sarif(project, Path.cwd())["runs"][0]["tool"]["driver"]["rules"]}
    assert {"set", "advisory_lock", "too_long", "syntax_error", "invalid_suppression"} <= set(rules)
    assert "pg_advisory_xact_lock" in rules["advisory_lock"]["help"]["text"]


def test_a_file_outside_the_working_directory_gets_an_absolute_uri(tmp_path: Path) -> None:
    (tmp_path / "q.py").write_text('Q = "LISTEN jobs"\n')
    [result] = to_sarif(check_paths([tmp_path]), tmp_path / "elsewhere")["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": (tmp_path / "q.py").as_uri()
    }


def test_files_that_could_not_be_read_make_the_run_unsuccessful() -> None:
    result = CheckResult(files=0, errors=["app/secret.py: Permission denied"])
    [invocation] = to_sarif(result, Path.cwd())["runs"][0]["invocations"]
    assert invocation == {
        "executionSuccessful": False,
        "toolExecutionNotifications": [
            {"level": "error", "message": {"text": "app/secret.py: Permission denied"}}
        ],
    }
    assert to_json(result)["errors"] == ["app/secret.py: Permission denied"]
