"""Small whole-object reads and writes (manifests, reports, PCA models) on S3 or a local disk."""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from urllib.parse import unquote, urlparse


def read_bytes(uri: str) -> bytes:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        response = s3().get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        return response["Body"].read()
    with open(local_path(uri), "rb") as handle:
        return handle.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write whole or not at all: a local write goes through a temporary file and a rename."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        s3().put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data)
        return
    path = local_path(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)


def delete(uri: str) -> None:
    """Delete the object or file; one that is already gone is fine (an erasure may run twice)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        s3().delete_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        return
    try:
        os.remove(local_path(uri))
    except FileNotFoundError:
        pass


def exists(uri: str) -> bool:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from botocore.exceptions import ClientError

        try:
            s3().head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
            return True
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
    return os.path.exists(local_path(uri))


def local_path(uri: str) -> str:
    """A plain path from `file:///x`, `file:/x` (as Hadoop prints it) or `/x`."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path) if parsed.scheme else uri
    raise ValueError(f"{uri!r} is not a local path")


@lru_cache(maxsize=1)
def s3():
    """One client per process: creating one costs milliseconds, and some callers write per photo."""
    import boto3

    return boto3.client("s3")
