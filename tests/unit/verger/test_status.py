"""`verger status` reads the bucket and the warehouse, never Spark: done, pending, failed, rows."""
from __future__ import annotations

import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from contract.layout import FEATURES_TABLE
from emr_job.store import commit_files, open_catalog
from verger.cli import main

BUCKET = "verger-status"


@pytest.fixture
def warehouse(tmp_path):
    """A local warehouse with a features table of three rows for two photos, and one report."""
    root = tmp_path / "warehouse"
    catalog = open_catalog(str(root))
    data = root / "features" / "part-0.parquet"
    data.parent.mkdir(parents=True)
    pq.write_table(pa.table({"image_key": ["raw/A/1.jpg", "raw/A/1.jpg", "raw/B/2.jpg"], "etag": ["e1", "e2", "e3"]}), data)
    commit_files(catalog, FEATURES_TABLE, [f"file://{data}"], "incr-aaaa")
    (root / "reports").mkdir()
    (root / "reports" / "incr-aaaa.json").write_text("{}")
    return root


def test_status_counts_done_pending_failed_dead_letters_and_rows(warehouse, capsys, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        # GIVEN two manifests in the bucket (one reported), a failed attempt and two dead letters
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
        for key in ("manifests/incr-aaaa.json", "manifests/incr-bbbb.json", "manifests/attempts/incr-bbbb/1.json",
                    "manifests/attempts/incr-bbbb/1-failed.json"):
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
        dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
        for body in ("a", "b"):
            sqs.send_message(QueueUrl=dlq, MessageBody=body)

        # WHEN verger status runs with --json
        code = main(["status", "--warehouse", str(warehouse), "--bucket", BUCKET, "--dead-letter-queue", dlq, "--json"])

    # THEN it reports each figure
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {
        "batches_done": 1, "batches_pending": 1, "pending_batch_ids": ["incr-bbbb"], "failed_attempts": 1,
        "dead_letters": 2, "features_rows": 3, "photos_stored": 2, "quarantine_rows": 0,
    }


def test_status_without_a_bucket_reads_the_local_manifests_and_says_what_it_cannot_see(warehouse, capsys):
    # GIVEN a local run's manifest without a report
    (warehouse / "manifests").mkdir()
    (warehouse / "manifests" / "incr-cccc.json").write_text("{}")
    # WHEN / THEN it is pending, and the figures it cannot know say so
    assert main(["status", "--warehouse", str(warehouse)]) == 0
    out = capsys.readouterr().out
    assert "batches pending: 1" in out and "pending batch ids: incr-cccc" in out
    assert "failed attempts: unknown (give --bucket)" in out
    assert "photos stored: 2" in out
