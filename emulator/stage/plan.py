"""What the stage will create, and roughly what it costs per hour, printed before anything is made."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulator.paths import TERRAFORM_DIR

# us-east-1 on-demand list prices (USD) of what bills by the hour; other regions differ by a few
# per cent. Rough on purpose: the stage prints them so nobody is surprised, not as a quote.
INSTANCE_HOURLY = {
    "db.t4g.micro": (0.016, 2),
    "db.t4g.small": (0.032, 2),
    "db.t4g.medium": (0.065, 2),
    "db.t3.micro": (0.018, 2),
    "db.t3.small": (0.036, 2),
    "db.m7g.large": (0.168, 2),
}
PROXY_PER_VCPU_HOUR = 0.015  # RDS Proxy bills the target's vCPUs, at least 2
GP3_PER_GB_MONTH = 0.115
SECRET_PER_MONTH = 0.40
HOURS_PER_MONTH = 730

_RESOURCE = re.compile(r'^resource\s+"([\w-]+)"\s+"([\w-]+)"', re.MULTILINE)
# A block whose first argument is `count = CONDITION ? 1 : 0` (meta-arguments come first, by convention).
_COUNT = re.compile(r"\s*\{\s*\n\s*count\s*=\s*([^\n]+?)\s*\?\s*1\s*:\s*0\s*\n")
_LOCALS = re.compile(r"^locals\s*\{(.*?)^\}", re.MULTILINE | re.DOTALL)
_LOCAL = re.compile(r"^\s*(\w+)\s*=\s*(var\.[^\n#]+?)\s*$", re.MULTILINE)
# The conditions the plan can judge: a variable, or a variable compared with a string.
_VARIABLE_TEST = re.compile(r'var\.(\w+)(?:\s*==\s*"([^"]*)")?')
_DEFAULT = r'variable\s+"{name}"\s*\{{[^}}]*?default\s*=\s*"?([\w.-]+)"?'


@dataclass(frozen=True)
class Cost:
    lines: list[tuple[str, float | None]]

    @property
    def hourly(self) -> float | None:
        if any(price is None for _, price in self.lines):
            return None
        return sum(price or 0.0 for _, price in self.lines)


def declared_resources(source: Path = TERRAFORM_DIR) -> list[str]:
    """Every resource the configuration declares (type.name), read from the .tf files themselves."""
    found = []
    for path in sorted(source.glob("*.tf")):
        found += [f"{kind}.{name}" for kind, name in _RESOURCE.findall(path.read_text())]
    return found


def conditions(source: Path = TERRAFORM_DIR) -> dict[str, str]:
    """The resources declared with `count = CONDITION ? 1 : 0` (type.name: CONDITION, a local
    spelled out as its expression): created only when CONDITION holds."""
    texts = [path.read_text() for path in sorted(source.glob("*.tf"))]
    locals_ = {
        name: expr
        for text in texts
        for block in _LOCALS.findall(text)
        for name, expr in _LOCAL.findall(block)
    }
    found: dict[str, str] = {}
    for text in texts:
        headers = list(_RESOURCE.finditer(text))
        for index, header in enumerate(headers):
            end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
            body = text[header.end() : end]
            counted = _COUNT.match(body)
            if counted:
                condition = str(counted[1])
                local = re.fullmatch(r"local\.(\w+)", condition)
                found[f"{header[1]}.{header[2]}"] = locals_.get(local[1], condition) if local else condition
    return found


def holds(condition: str, variables: Mapping[str, Any], source: Path = TERRAFORM_DIR) -> bool | None:
    """Whether `var.NAME` or `var.NAME == "VALUE"` holds with these variables (a variable not among
    them has its declared default); None for any other condition."""
    found = _VARIABLE_TEST.fullmatch(condition.strip())
    if found is None:
        return None
    name, expected = found[1], found[2]
    if name in variables:
        value = variables[name]
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    else:
        try:
            text = variable_default(name, source)
        except ValueError:
            return None
    return text == "true" if expected is None else text == expected


def planned(variables: Mapping[str, Any], source: Path = TERRAFORM_DIR) -> tuple[list[str], dict[str, str]]:
    """What an apply with these variables creates: every declared resource but those whose count
    condition does not hold, and, of those kept, the ones whose condition could not be judged here
    (with it)."""
    counted = conditions(source)
    resources, undecided = [], {}
    for resource in declared_resources(source):
        condition = counted.get(resource)
        verdict = True if condition is None else holds(condition, variables, source)
        if verdict is False:
            continue
        resources.append(resource)
        if verdict is None and condition is not None:
            undecided[resource] = condition
    return resources, undecided


def variable_default(name: str, source: Path = TERRAFORM_DIR) -> str:
    """A variable's default as terraform/main.tf declares it (what the stage deploys)."""
    found = re.search(_DEFAULT.format(name=re.escape(name)), (source / "main.tf").read_text())
    if found is None:
        raise ValueError(f"terraform/main.tf declares no default for {name}")
    return found[1]


def hourly_cost(instance_class: str, storage_gb: int) -> Cost:
    known = INSTANCE_HOURLY.get(instance_class)
    instance = known[0] if known else None
    vcpus = known[1] if known else None
    return Cost(
        [
            (f"RDS for PostgreSQL {instance_class}", instance),
            (f"{storage_gb} GB gp3 storage", storage_gb * GP3_PER_GB_MONTH / HOURS_PER_MONTH),
            (
                f"RDS Proxy ({vcpus or '?'} vCPUs of the target, at least 2)",
                None if vcpus is None else max(vcpus, 2) * PROXY_PER_VCPU_HOUR,
            ),
            ("Secrets Manager secret", SECRET_PER_MONTH / HOURS_PER_MONTH),
        ]
    )


def describe(
    resources: list[str],
    cost: Cost,
    *,
    region: str,
    name_prefix: str,
    only_if: dict[str, str] | None = None,
) -> str:
    lines = [f"The AWS stage will create, in {region}, with the name prefix {name_prefix}:"]
    only_if = only_if or {}
    lines += [
        f"  {resource}" + (f"  (only if {only_if[resource]})" if resource in only_if else "")
        for resource in resources
    ]
    lines.append("Rough cost while it exists (us-east-1 on-demand list prices):")
    for what, price in cost.lines:
        lines.append(f"  {what:<52} {'unknown' if price is None else f'${price:.4f}/h'}")
    total = cost.hourly
    shown = "unknown (see aws.amazon.com/rds/pricing)" if total is None else f"${total:.3f}/h"
    lines.append(f"  {'total':<52} {shown}")
    lines.append(
        "  plus cents for Lambda requests, CloudWatch metrics and logs. RDS bills at least 10 minutes;"
        " a stage run takes 30-45 minutes, mostly the database being created and deleted."
    )
    return "\n".join(lines)
