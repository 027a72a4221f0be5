"""`verger status`: is the pipeline keeping up? Batches done and pending, failed attempts, dead
letters and the store's rows, from what the bucket and the warehouse hold (no Spark)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from contract.layout import FEATURES_TABLE, MANIFEST_PREFIX, QUARANTINE_TABLE


def add_command(subparsers) -> None:
    status = subparsers.add_parser(
        "status", help="batches done and pending, failed attempts, dead letters, rows in the store",
        description="Done: batches with a report. Pending: manifests without one (in the bucket "
                    "with --bucket, else the warehouse's local manifests). Failed attempts: failed "
                    "runs the trigger recorded. Dead letters: with --dead-letter-queue.",
    )
    status.add_argument("--warehouse", required=True, help="warehouse directory or s3://BUCKET/warehouse")
    status.add_argument("--bucket", help="the stack's bucket (manifests and attempt records)")
    status.add_argument("--dead-letter-queue", help="URL of the upload DLQ (stack output DeadLetterQueueUrl)")
    status.add_argument("--json", action="store_true", help="one JSON object instead of text")
    status.set_defaults(command=command_status)


def command_status(args: argparse.Namespace) -> int:
    found = collect_status(args.warehouse, args.bucket, args.dead_letter_queue)
    if args.json:
        print(json.dumps(found, indent=1, sort_keys=True))
    else:
        for name, value in found.items():
            print(f"{name.replace('_', ' ')}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def collect_status(warehouse: str, bucket: str | None, dead_letter_queue: str | None) -> dict[str, Any]:
    import boto3

    from emr_job.store import is_local, warehouse_root
    from functions.recovery import manifests, reported_batches

    s3 = boto3.client("s3") if bucket or not is_local(warehouse) else None
    done = reported_batches(s3, warehouse_root(warehouse))
    written = ([batch_id for batch_id, _ in manifests(s3, bucket)] if bucket
               else local_manifests(warehouse_root(warehouse)))
    pending = sorted(set(written) - done)
    return {
        "batches_done": len(done),
        "batches_pending": len(pending),
        "pending_batch_ids": pending,
        "failed_attempts": _failed_attempts(s3, bucket) if bucket else "unknown (give --bucket)",
        "dead_letters": _queue_depth(dead_letter_queue) if dead_letter_queue else "unknown (give --dead-letter-queue)",
        **store_rows(warehouse),
    }


def local_manifests(root: str) -> list[str]:
    return [path.stem for path in Path(root, MANIFEST_PREFIX).glob("*.json")]


def store_rows(warehouse: str) -> dict[str, int]:
    """Rows of the features and quarantine tables (snapshot summaries), and the distinct photos
    with features (a re-upload adds a row for the same photo; only the key column is read)."""
    import pyarrow.compute as pc

    from emr_job.store import load_table, open_catalog, read_columns, row_count

    catalog = open_catalog(warehouse)
    rows = {}
    for table_name in (FEATURES_TABLE, QUARANTINE_TABLE):
        table = load_table(catalog, table_name)
        rows[f"{table_name}_rows"] = row_count(table)
        if table_name == FEATURES_TABLE:
            has_rows = table is not None and table.current_snapshot() is not None
            keys = read_columns(table, ["image_key"])["image_key"] if has_rows else None
            rows["photos_stored"] = int(pc.count_distinct(keys).as_py()) if keys is not None else 0
    return rows


def _failed_attempts(s3: Any, bucket: str) -> int:
    from functions.attempts import ATTEMPTS_PREFIX

    paginator = s3.get_paginator("list_objects_v2")
    return sum(
        entry["Key"].endswith("-failed.json")
        for page in paginator.paginate(Bucket=bucket, Prefix=ATTEMPTS_PREFIX)
        for entry in page.get("Contents", [])
    )


def _queue_depth(queue_url: str) -> int:
    import boto3

    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])
