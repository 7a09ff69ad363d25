"""check-sql, a static check: which SQL in a project's code would make RDS Proxy pin, why (the
emulator's own pinning rules, RDS Proxy's reason and digest), and what to do instead.

sources finds the queries in Python and .sql files, walk which files to read, check runs the
rules, suppressions applies `rds-proxy: allow` comments, formats writes text, JSON or SARIF, and cli
is the command.
"""

from emulator.tools.sqlcheck.check import CheckResult, FileCheck, check_file, check_paths
from emulator.tools.sqlcheck.findings import Finding, Suppressed

__all__ = ["CheckResult", "FileCheck", "Finding", "Suppressed", "check_file", "check_paths"]
