"""What the source holds now, listed by the executors: the sweep's and the full recompute's input.

A million-photo listing fits neither a Lambda nor a manifest, nor the driver: the driver only names
the prefixes (one delimiter listing per photo prefix: the label folders), and each task lists one
prefix into (image_key, etag, label) rows that stay distributed.
"""
from __future__ import annotations

import os
from typing import Iterator
from urllib.parse import unquote, urlparse

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from contract import layout
from emr_job.folders import file_md5, folder_item

LISTING_SCHEMA = "image_key string, etag string, label string, size long"
PREFIX_SCHEMA = "prefix string, recursive boolean"


def list_source(spark: SparkSession, source: str) -> DataFrame:
    """Every photo under the source's photo prefixes (S3: raw/ and inbox/; a local folder: all of
    it), one row per object, listed one prefix per task."""
    prefixes = list_prefixes(source)
    frame = pd.DataFrame(prefixes, columns=["prefix", "recursive"])
    partitions = max(1, min(len(prefixes), spark.sparkContext.defaultParallelism * 4))

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for chunk in frames:
            for prefix, recursive in zip(chunk["prefix"], chunk["recursive"]):
                rows = list(list_prefix(source, prefix, bool(recursive)))
                yield pd.DataFrame(rows, columns=["image_key", "etag", "label", "size"])

    return spark.createDataFrame(frame, PREFIX_SCHEMA).repartition(partitions).mapInPandas(run, LISTING_SCHEMA)


def list_prefixes(source: str) -> list[tuple[str, bool]]:
    """(prefix, recursive) pairs that together cover every photo once: each first-level folder
    recursively, and the files directly under each photo prefix on their own."""
    parsed = urlparse(source)
    if parsed.scheme == "s3":
        client = _s3()
        prefixes: list[tuple[str, bool]] = []
        for top in layout.PHOTO_PREFIXES:
            prefixes.append((top, False))
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=parsed.netloc, Prefix=top, Delimiter="/"
            ):
                prefixes += [(entry["Prefix"], True) for entry in page.get("CommonPrefixes", [])]
        return prefixes
    root = unquote(parsed.path)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"source folder not found: {root}")
    folders = sorted(entry.name + "/" for entry in os.scandir(root) if entry.is_dir())
    return [("", False)] + [(folder, True) for folder in folders]


def list_prefix(source: str, prefix: str, recursive: bool) -> Iterator[tuple[str, str, str | None, int | None]]:
    """(image_key, etag, label, size) of the photos under one prefix (S3's ETag; a local file's
    MD5, which is what S3 reports for a single-part upload; a link leading outside the folder is
    never read, and the job quarantines it)."""
    parsed = urlparse(source)
    if parsed.scheme == "s3":
        arguments = {"Bucket": parsed.netloc, "Prefix": prefix}
        if not recursive:
            arguments["Delimiter"] = "/"
        for page in _s3().get_paginator("list_objects_v2").paginate(**arguments):
            for entry in page.get("Contents", []):
                if layout.is_image_key(entry["Key"]):
                    yield entry["Key"], entry["ETag"].strip('"'), layout.label_of(entry["Key"]), entry["Size"]
        return
    root = unquote(parsed.path)
    for directory, folders, files in os.walk(os.path.join(root, prefix)):
        if not recursive:
            folders.clear()
        for name in files:
            key = os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/")
            if layout.is_image_key(key):
                item = folder_item(root, key)
                yield key, item.etag, layout.label_of(key), item.size


def current_etags(source: str, keys: list[str]) -> dict[str, str]:
    """key → the etag the object has now, for the keys that still exist (what a removal checks, so
    that a removal processed after a re-upload leaves the new version alone)."""
    parsed = urlparse(source)
    found: dict[str, str] = {}
    if parsed.scheme == "s3":
        from botocore.exceptions import ClientError

        client = _s3()
        for key in keys:
            try:
                found[key] = client.head_object(Bucket=parsed.netloc, Key=key)["ETag"].strip('"')
            except ClientError as error:
                if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                    raise
        return found
    root = unquote(parsed.path)
    for key in keys:
        path = os.path.join(root, key)
        if os.path.isfile(path):
            found[key] = file_md5(path)
    return found


def _s3():
    from emr_job.fetch import s3_client

    return s3_client()
