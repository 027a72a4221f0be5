"""A job that fails for real the first time: on one machine (moto's S3 + SQS, the real handler, the
real Spark job) the batch runs again and every photo is stored exactly once."""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import boto3
import pytest

from verger import embedded
from verger.demo import DemoOptions, EmbeddedRun, local_function_environment, spark_conf_dir, upload
from verger.report import feature_counts

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


def test_a_job_that_fails_once_is_run_again_and_stores_every_photo_once(tmp_path, fruits, weights):
    # GIVEN 12 photos, and a job that exits non-zero the first time it is started
    images = tmp_path / "images"
    keys = []
    for label in LABELS:
        (images / label).mkdir(parents=True)
        for name in sorted(os.listdir(fruits / label))[:PER_LABEL]:
            (images / label / name).symlink_to(fruits / label / name)
            keys.append(f"{label}/{name}")
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
            run = EmbeddedRun(stack, embedded.load_handler(stack.handler), boto3.client("s3"), sqs, options)
            upload(run.s3, stack.bucket, images, keys, "photos")

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
