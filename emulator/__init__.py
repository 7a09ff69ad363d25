"""The local twin of AWS Lambda + RDS Proxy + PostgreSQL.

The package holds the embedded local stack (PostgreSQL, the AWS API emulator and a proxy as plain
processes on 127.0.0.1), the in-process Lambda execution environments and the demonstration.
"""

__version__ = "0.1.0"
