"""Benchmark: moto's SQS as shipped vs patched by `verger.moto_sqs`, side by side.

Sends N S3-notification-sized messages, receives them all 10 at a time while they stay in flight
(as the event source gathers a batch), then deletes them 10 at a time; prints seconds per stage.
`.venv/bin/python tests/unit/verger/bench_fast_sqs.py [N]` (default 1,000; moto as shipped takes
minutes beyond that).
"""
from __future__ import annotations

import sys
import time
from contextlib import nullcontext

import boto3
from moto import mock_aws

from verger.moto_sqs import fast_sqs

BODY = "x" * 1300  # an S3 notification with the fields real S3 sends


def stages(messages: int) -> dict[str, float]:
    sqs = boto3.client("sqs", region_name="eu-west-3")
    url = sqs.create_queue(QueueName="bench", Attributes={"VisibilityTimeout": "900"})["QueueUrl"]
    seconds, started = {}, time.perf_counter()
    for _ in range(0, messages, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": BODY} for i in range(10)])
    seconds["send"], started = time.perf_counter() - started, time.perf_counter()
    handles = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"]).get("Messages"):
        handles += [message["ReceiptHandle"] for message in batch]
    seconds["receive"], started = time.perf_counter() - started, time.perf_counter()
    for start in range(0, len(handles), 10):
        sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": handle}
                                                        for i, handle in enumerate(handles[start:start + 10])])
    seconds["delete"] = time.perf_counter() - started
    assert len(handles) == messages
    return seconds


def main() -> None:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    results = {}
    for name, patch in (("moto 5.2.5 as shipped", nullcontext()), ("patched (verger.moto_sqs)", fast_sqs())):
        with mock_aws(), patch:
            results[name] = stages(messages)
        print(f"{name:32} " + "  ".join(f"{stage} {s:7.2f} s" for stage, s in results[name].items()), flush=True)
    shipped, patched = (sum(r.values()) for r in results.values())
    print(f"{messages} messages: {shipped:.1f} s -> {patched:.1f} s ({shipped / patched:.0f}x faster)")


if __name__ == "__main__":
    main()
