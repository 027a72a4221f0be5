"""Read image bytes where the executors run: S3 (or the embedded S3 API) with boto3, or local files.

Spark here has no S3A connector, and boto3 reads real S3 and moto's server alike (it honours
`AWS_ENDPOINT_URL`), so the job fetches bytes itself, several GETs at once per partition.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Iterator
from urllib.parse import unquote, urlparse

from emr_job.images import Reason, Rejected

CONCURRENT_GETS = 16


@dataclass(frozen=True)
class Fetched:
    key: str
    content: bytes | Rejected


def fetch_all(source: str, keys: Iterable[str], etags: Iterable[str]) -> Iterator[Fetched]:
    """Yield each key's bytes (or why they could not be read) in the order given."""
    parsed = urlparse(source)
    if parsed.scheme == "s3":
        client = s3_client()
        with ThreadPoolExecutor(CONCURRENT_GETS) as pool:
            yield from pool.map(lambda ke: get_object(client, parsed.netloc, *ke), zip(keys, etags))
    elif parsed.scheme == "file":
        root = unquote(parsed.path)
        for key in keys:
            yield read_local(root, key)
    else:
        raise ValueError(f"cannot fetch from {source!r}: expected s3:// or file://")


@lru_cache(maxsize=1)
def s3_client():
    """One client per Python worker, with botocore's adaptive retries (backoff on throttling/5xx)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 8, "mode": "adaptive"},
        max_pool_connections=CONCURRENT_GETS * 2,
    )
    return boto3.client("s3", config=config)


def get_object(client, bucket: str, key: str, etag: str) -> Fetched:
    """GET one object; if it changed since the manifest (etag differs) it is a newer upload's job."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = client.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag.strip(chr(34))}"')
        return Fetched(key, response["Body"].read())
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return Fetched(key, Rejected(Reason.MISSING, f"s3://{bucket}/{key} does not exist"))
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return Fetched(key, Rejected(Reason.FORBIDDEN, f"access denied to s3://{bucket}/{key}"))
        if code == "PreconditionFailed" or status == 412:
            return Fetched(
                key,
                Rejected(Reason.MISSING, f"s3://{bucket}/{key} no longer has etag {etag} (replaced since)"),
            )
        return Fetched(key, Rejected(Reason.FETCH_FAILED, f"{code or status}: {error}"))
    except BotoCoreError as error:
        return Fetched(key, Rejected(Reason.FETCH_FAILED, f"{type(error).__name__}: {error}"))


def read_local(root: str, key: str) -> Fetched:
    path = os.path.normpath(os.path.join(root, key))
    if not path.startswith(os.path.join(os.path.normpath(root), "")):
        return Fetched(key, Rejected(Reason.FORBIDDEN, f"key {key!r} points outside the source folder {root}"))
    try:
        with open(path, "rb") as handle:
            return Fetched(key, handle.read())
    except FileNotFoundError:
        return Fetched(key, Rejected(Reason.MISSING, f"{path} does not exist"))
    except PermissionError:
        return Fetched(key, Rejected(Reason.FORBIDDEN, f"permission denied reading {path}"))
    except OSError as error:
        return Fetched(key, Rejected(Reason.FETCH_FAILED, f"{path}: {error}"))
