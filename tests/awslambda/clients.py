"""boto3's Lambda client for a local Invoke API, as the tests call it."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.config


def lambda_client(endpoint_url: str) -> Any:
    # No retries: a test sees each answer the API gave, not the last of several.
    return boto3.client(
        "lambda",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=botocore.config.Config(retries={"max_attempts": 0}),
    )
