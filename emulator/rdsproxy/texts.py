"""What RDS Proxy says, in its own words (sources in docs/rds-proxy-reference.md).

SQLSTATEs are not documented by AWS; where a real client report shows one we use it (0A000 for
unsupported features, 08000 for the borrow timeout), elsewhere PostgreSQL's nearest code.
"""

from __future__ import annotations

FEATURE_NOT_SUPPORTED = "0A000"
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"
CONNECTION_EXCEPTION = "08000"
PROTOCOL_VIOLATION = "08P01"
CONNECTION_FAILURE = "08006"

PROTOCOL_VERSION = (
    "Feature not supported: RDS Proxy supports only version 3.0 of the PostgreSQL messaging protocol."
)
# The real message (psycopg2#1577) has a typographic apostrophe here and a plain one in the next.
COMMAND_LINE_OPTIONS = "Feature not supported: RDS Proxy currently doesn\u2019t support command-line options."
UNSUPPORTED_OPTION = "Feature not supported: RDS Proxy currently doesn't support the option {name}."
REPLICATION = "Feature not supported: RDS Proxy currently doesn't support streaming replication mode."
MISSING_USER = (
    "A user name is missing from the connection startup packet. Provide a user name for this connection."
)
TLS_REQUIRED = "This RDS Proxy requires TLS connections."
IAM_NEEDS_TLS = "IAM authentication is allowed only with SSL connections."
IAM_FAILED = "IAM authentication failed for user {user}. Check the IAM token for this user and try again."
NO_CREDENTIALS = "This RDS proxy has no credentials for the role {user}. Check the credentials for this role and try again."
WRONG_PASSWORD = "The password that was provided for the role {user} is wrong."
UNSUPPORTED_AUTH = "RDS Proxy supports only IAM, MD5, or SCRAM authentication."
BORROW_TIMEOUT = "Timed-out waiting to acquire database connection."
DATABASE_ERROR = "Request returned an error: {error}"
UNKNOWN_ERROR = "Unknown error."

# Why a client connection closed, as RDS Proxy logs it ("The client connection closed. Reason: ...").
CLIENT_REQUESTED_CLOSE = "The client requested that the connection close."
TCP_CLOSED = "The TCP channel was closed by either the client or the proxy."
# The emulator's words where AWS's are unknown.
IDLE_CLIENT_CLOSE = "The client connection was idle for longer than the idle client timeout."
CLIENT_LIFETIME_CLOSE = "The client connection reached the maximum client connection life of 24 hours."
BORROW_TIMEOUT_CLOSE = "The proxy timed out waiting to acquire a database connection."
# A database connection lost under a client (failover, restart): AWS says such clients are "canceled".
LOST_MID_REQUEST = "The database connection closed in the middle of a request."
LOST_MID_TRANSACTION = "The database connection closed in the middle of a transaction."
# The detail of the proxy's error when the server ended the connection with a FATAL of its own.
DATABASE_ENDED = "The database ended the connection: {reason}."
# A READ_ONLY endpoint of a proxy whose target has no reader instance: AWS says such requests "fail
# with an error" without giving it.
NO_READER_INSTANCES = "This read-only proxy endpoint's target has no reader DB instances."
PINNED_CONNECTION_LOST = "The database connection of this pinned session was lost."
LOGIN_TIMEOUT = "The client did not complete its login within {seconds} seconds."
# PostgreSQL's words where AWS documents none (auth-scram.c).
MALFORMED_SCRAM = "malformed SCRAM message"
