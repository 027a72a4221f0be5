"""Benchmark (not a test): one 10,000-record SQS batch through the handler, under moto.

    .venv/bin/python tests/unit/functions/bench_sqs_batch.py [--records 10000] [--repeat 3]

Prints the handler's wall time per run (setup excluded). Each run uses new keys, so every run
parses, dedupes, packs, writes manifests and adds steps; the target is under 2 s.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import boto3
from moto import mock_aws

from conftest import BUCKET, REGION, FakeLambdaContext, function_environment, load_event


def sqs_batch(records: int, run: int) -> dict:
    """`records` real-shaped SQS messages, one upload each, spread over 131 class folders."""
    template = load_event("sqs-s3-batch.json")["Records"][1]
    notification = json.loads(template["body"])
    batch = []
    for index in range(records):
        body = copy.deepcopy(notification)
        s3_object = body["Records"][0]["s3"]["object"]
        s3_object["key"] = f"raw/Class+{index % 131}/r{run}_{index}_100.jpg"
        s3_object["eTag"] = f"{index:032x}"
        s3_object["sequencer"] = f"{run:04X}{index:012X}"
        batch.append({**template, "messageId": f"run{run}-{index}", "body": json.dumps(body)})
    return {"Records": batch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION,
                      AWS_REGION=REGION, POWERTOOLS_LOG_LEVEL="WARNING")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        cluster = boto3.client("emr").run_job_flow(
            Name="bench", ReleaseLabel="emr-7.13.0", JobFlowRole="r", ServiceRole="s",
            Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        )["JobFlowId"]
        os.environ.update(function_environment({"BucketName": BUCKET, "ExistingClusterId": cluster}))
        from functions.app import handler

        for run in range(args.repeat):
            event = sqs_batch(args.records, run)
            started = time.perf_counter()
            response = handler(event, FakeLambdaContext())
            elapsed = time.perf_counter() - started
            failures = len(response["batchItemFailures"])
            print(f"run {run}: {args.records} records in {elapsed:.2f} s ({failures} failures)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
