"""boto3 clients, made once per execution environment and reused across invocations.

Creating a client costs tens of milliseconds, so they are cached; boto3 (>= 1.28) reads
AWS_ENDPOINT_URL itself, which points them at moto's server in the embedded mode.
"""
from __future__ import annotations

from functools import cache
from typing import Any

import boto3


@cache
def client(service: str) -> Any:
    return boto3.client(service)
