"""Read image bytes where the executors run: S3 (or the embedded S3 API) with boto3, or local files.

Spark here has no S3A connector, and boto3 reads real S3 and moto's server alike (it honours
`AWS_ENDPOINT_URL`), so the job fetches bytes itself, several GETs at once per partition.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Iterator
from urllib.parse import unquote, urlparse

from contract.layout import key_problem
from emr_job.folders import resolved_path
from emr_job.images import Reason, Rejected

CONCURRENT_GETS = 16
# The largest photo fetched: a 50 MP JPEG is about 25 MB; anything bigger is refused before the GET
# when the manifest gives its size, and after reading one byte past the limit otherwise.
MAX_OBJECT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Fetched:
    key: str
    content: bytes | Rejected


def fetch_all(source: str, keys: Iterable[str], etags: Iterable[str],
              sizes: Iterable[int | None] | None = None) -> Iterator[Fetched]:
    """Yield each key's bytes (or why they could not be read) in the order given.

    `sizes` are the manifest's object sizes (None where unknown): an object larger than
    MAX_OBJECT_BYTES is refused without being read.
    """
    parsed = urlparse(source)
    if parsed.scheme not in ("s3", "file"):
        raise ValueError(f"cannot fetch from {source!r}: expected s3:// or file://")

    def fetch(key: str, etag: str, size: int | None) -> Fetched:
        refused = refusal(key, size)
        if refused:
            return Fetched(key, refused)
        if parsed.scheme == "s3":
            return get_object(s3_client(), parsed.netloc, key, etag)
        return read_local(unquote(parsed.path), key)

    keys = list(keys)
    sizes = [None] * len(keys) if sizes is None else sizes
    with ThreadPoolExecutor(CONCURRENT_GETS if parsed.scheme == "s3" else 1) as pool:
        yield from pool.map(fetch, keys, etags, sizes)


def refusal(key: str, size: int | None) -> Rejected | None:
    """Why `key` is not fetched at all: an unsafe key, or a size over the limit."""
    problem = key_problem(key)
    if problem:
        return Rejected(Reason.UNSAFE_KEY, f"key {key!r} refused: {problem}")
    if size is not None and size > MAX_OBJECT_BYTES:
        return too_large(f"{size:,} bytes")
    return None


def too_large(size: str) -> Rejected:
    return Rejected(Reason.TOO_LARGE, f"{size} exceeds the limit of {MAX_OBJECT_BYTES:,} bytes per photo")


def read_capped(stream) -> bytes | Rejected:
    """At most MAX_OBJECT_BYTES from `stream` (whatever the manifest said): one byte more is too large."""
    content = stream.read(MAX_OBJECT_BYTES + 1)
    return too_large("the object read") if len(content) > MAX_OBJECT_BYTES else content


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
        with response["Body"] as body:
            return Fetched(key, read_capped(body))
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
    """The file's bytes, once its real path (symbolic links resolved) is known to lie in `root`."""
    path, inside = resolved_path(root, key)
    if not inside:
        return Fetched(key, Rejected(Reason.OUTSIDE_SOURCE, f"{key!r} resolves to {path}, outside the source folder {root}"))
    try:
        with open(path, "rb") as handle:
            return Fetched(key, read_capped(handle))
    except FileNotFoundError:
        return Fetched(key, Rejected(Reason.MISSING, f"{path} does not exist"))
    except PermissionError:
        return Fetched(key, Rejected(Reason.FORBIDDEN, f"permission denied reading {path}"))
    except OSError as error:
        return Fetched(key, Rejected(Reason.FETCH_FAILED, f"{path}: {error}"))
