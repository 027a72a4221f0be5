"""A job that fails for real the first time: on one machine (moto's S3 + SQS, the real handler, the
real Spark job) the batch runs again and every photo is stored exactly once."""
from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from pathlib import Path
from urllib.parse import unquote_plus

import boto3
import pytest

from verger import embedded
from verger.demo.run import DemoOptions, EmbeddedRun, local_function_environment, spark_conf_dir, upload_all
from verger.report import feature_counts

EVENTS = Path(__file__).resolve().parents[2] / "events"

pytestmark = pytest.mark.integration

LABELS = ("Kiwi", "Lemon Meyer")
PER_LABEL = 6


def failing_once(real: Path, marker: Path, directory: Path) -> Path:
    """A spark-submit that exits 3 the first time (a step dying: Spot loss, OOM) and then runs the real one."""
    script = directory / "spark-submit-failing-once"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ ! -e "{marker}" ]; then touch "{marker}"; echo "injected failure" >&2; exit 3; fi\n'
        f'exec "{real}" "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def photos(fruits: Path) -> list[tuple[Path, str]]:
    """(file, key under raw/) of the first photos of each label."""
    return [(fruits / label / name, f"raw/{label}/{name}")
            for label in LABELS for name in sorted(os.listdir(fruits / label))[:PER_LABEL]]


def test_a_job_that_fails_once_is_run_again_and_stores_every_photo_once(tmp_path, fruits, weights):
    # GIVEN 12 photos, and a job that exits non-zero the first time it is started
    images, uploads = tmp_path / "images", photos(fruits)
    keys = [key for _, key in uploads]
    warehouse = tmp_path / "warehouse"
    options = DemoOptions(images=images, warehouse=warehouse, weights=weights)
    marker = tmp_path / "failed-once"
    with embedded.moto_server(), spark_conf_dir(embedded.free_port()) as spark_env:
        stack = embedded.create_stack("verger-healing", {})
        # SQS hides a failed message for the queue's visibility timeout (17 min): 1 s here
        sqs = boto3.client("sqs")
        sqs.set_queue_attributes(QueueUrl=stack.queue.queue_url, Attributes={"VisibilityTimeout": "1"})
        environment = local_function_environment(stack, options)
        environment["VERGER_SPARK_SUBMIT"] = str(failing_once(Path(environment["VERGER_SPARK_SUBMIT"]), marker, tmp_path))
        with embedded.patched_environ({**environment, **spark_env}):
            run = EmbeddedRun(stack, embedded.load_handler(stack.handler), boto3.client("s3"), sqs, options,
                              io.StringIO())
            upload_all(run.s3, stack.bucket, uploads, threading.Event())

            # WHEN the queue is drained: the first invocation's job fails, SQS delivers the batch again
            first = embedded.drain_queue(sqs, stack.queue, run.invoke)
            time.sleep(1.5)
            invocations = embedded.drain_queue(sqs, stack.queue, run.invoke)

    # THEN the first delivery failed every photo's record (only moto's s3:TestEvent succeeded), the
    # second ran the job, and every photo is stored exactly once
    assert marker.exists()
    assert [len(invocation.failed_message_ids) for invocation in first] == [len(keys)]
    assert [invocation.failed_message_ids for invocation in invocations] == [()]
    assert feature_counts(warehouse) == (len(keys), len(keys))


def test_a_photo_whose_notification_was_lost_is_stored_by_the_scheduled_reconcile(tmp_path, fruits, weights):
    # GIVEN 12 uploaded photos, one of whose notifications is lost before the function sees it
    uploads = photos(fruits)
    warehouse = tmp_path / "warehouse"
    options = DemoOptions(images=tmp_path, warehouse=warehouse, weights=weights)
    with embedded.moto_server(), spark_conf_dir(embedded.free_port()) as spark_env:
        stack = embedded.create_stack("verger-sweep", {})
        sqs = boto3.client("sqs")
        with embedded.patched_environ({**local_function_environment(stack, options), **spark_env}):
            run = EmbeddedRun(stack, embedded.load_handler(stack.handler), boto3.client("s3"), sqs, options,
                              io.StringIO())
            upload_all(run.s3, stack.bucket, uploads, threading.Event())
            lost = lose_one_photo_notification(sqs, stack.queue.queue_url)
            embedded.drain_queue(sqs, stack.queue, run.invoke)
            stored_before = feature_counts(warehouse)

            # WHEN the schedule's reconcile event arrives, twice (Scheduler delivers at least once)
            event = json.loads((EVENTS / "scheduled-reconcile.json").read_text())
            first, again = run.invoke(event), run.invoke(event)

    # THEN the events' batch stored 11 photos, the sweep stored the lost one, once, and the second
    # delivery submitted nothing new
    assert lost.startswith("raw/"), lost
    assert stored_before == (len(uploads) - 1, len(uploads) - 1)
    assert feature_counts(warehouse) == (len(uploads), len(uploads))
    assert first["sweep_batch_id"] == again["sweep_batch_id"]


def lose_one_photo_notification(sqs, queue_url: str) -> str:
    """Delete one photo's S3 notification from the queue (S3 delivers best effort); its key. Every
    other message received on the way is made visible again at once."""
    lost = None
    while lost is None:
        for message in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
            body = json.loads(message["Body"])
            if lost is None and "Records" in body:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                lost = unquote_plus(body["Records"][0]["s3"]["object"]["key"])
            else:
                sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"],
                                              VisibilityTimeout=0)
    return lost
