"""The proxy's AWS API clients (Secrets Manager, CloudWatch, CloudWatch Logs, RDS's token signer).

Made with botocore itself: boto3 adds nothing the proxy uses but its imports (about 3 MB of the
proxy's memory). Each user makes its client once and keeps it, where a session and a client were
made for every secret read and every metrics publication (the endpoint data and the service model
loaded each time). botocore's clients are thread-safe; the calls run in the loop's executor.
"""

from __future__ import annotations

from typing import Any

import botocore.session
from botocore.config import Config


def aws_client(service: str, region: str, *, endpoint_url: str = "", config: Config | None = None) -> Any:
    """A client in a session of its own: credentials, and AWS_ENDPOINT_URL when endpoint_url is
    empty, from the environment, as boto3's would be."""
    return botocore.session.get_session().create_client(
        service, region_name=region, endpoint_url=endpoint_url or None, config=config
    )
