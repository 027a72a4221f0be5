"""The demo's moto SQS patch: same answers as moto's own code, without walking every message."""
from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from verger.moto_sqs import fast_sqs


def scenario() -> dict:
    """Send, receive some, delete some (twice, and a bogus handle), count, release, receive again."""
    sqs = boto3.client("sqs", region_name="eu-west-3")
    url = sqs.create_queue(QueueName="q", Attributes={"VisibilityTimeout": "300"})["QueueUrl"]
    for start in range(0, 40, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{start + i}"}
                                                      for i in range(10)])
    sqs.send_message(QueueUrl=url, MessageBody="late", DelaySeconds=60)
    received = []
    for _ in range(3):
        received += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    counts = lambda: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]  # noqa: E731
    seen = {"after receive": {k: v for k, v in counts().items() if k.startswith("Approximate")}}
    deleted = sqs.delete_message_batch(QueueUrl=url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received[:10])])
    again = sqs.delete_message_batch(QueueUrl=url, Entries=[
        {"Id": "0", "ReceiptHandle": received[0]["ReceiptHandle"]},
        {"Id": "bogus", "ReceiptHandle": "not-a-handle"}])
    seen["deleted"] = sorted(entry["Id"] for entry in deleted["Successful"])
    seen["deleted again"] = (sorted(e["Id"] for e in again["Successful"]), [e["Code"] for e in again["Failed"]])
    sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(received[10:20])])
    seen["one count"] = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible", "VisibilityTimeout"])["Attributes"]
    rest = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        rest += batch
    seen["bodies left"] = sorted(m["Body"] for m in rest)
    seen["after drain"] = {k: v for k, v in counts().items() if k.startswith("Approximate")}
    with pytest.raises(ClientError) as error:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")
    seen["bad handle"] = error.value.response["Error"]["Code"]
    return seen


def test_patched_queue_answers_as_moto_does():
    # GIVEN the same sequence of SQS calls, against moto as shipped and against the patched moto
    with mock_aws():
        expected = scenario()
    with mock_aws(), fast_sqs():
        actual = scenario()
    # THEN every answer is the same: counters, deletes, errors, what is left to receive
    assert actual == expected
    assert expected["after receive"] == {"ApproximateNumberOfMessages": "10",
                                         "ApproximateNumberOfMessagesDelayed": "1",
                                         "ApproximateNumberOfMessagesNotVisible": "30"}


def test_patch_is_removed_after_the_block():
    from moto.sqs import models

    before = models.Queue.__dict__["messages"], models.SQSBackend.get_queue_attributes
    with fast_sqs():
        assert models.Queue.__dict__["messages"] is not before[0]
    assert (models.Queue.__dict__["messages"], models.SQSBackend.get_queue_attributes) == before
