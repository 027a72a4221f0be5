"""The demo's SQS poller: batches as the event source cuts them, while uploads are still arriving."""
from __future__ import annotations

import threading
import time

import boto3
from moto import mock_aws

from verger.embedded import EventSourceMapping, drain_queue
from verger.moto_sqs import fast_sqs


def queue(sqs, batch_size: int) -> EventSourceMapping:
    url = sqs.create_queue(QueueName="uploads", Attributes={"VisibilityTimeout": "300"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return EventSourceMapping(url, arn, batch_size, batching_window_s=60)


def send(sqs, url: str, bodies: list[str], pause_s: float = 0.0) -> None:
    for start in range(0, len(bodies), 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": body}
                                                      for i, body in enumerate(bodies[start:start + 10])])
        time.sleep(pause_s)


def test_batches_fill_up_while_uploads_trickle_in_and_the_last_one_closes_when_they_end():
    with mock_aws(), fast_sqs():
        sqs = boto3.client("sqs", region_name="eu-west-3")
        mapping = queue(sqs, batch_size=100)
        # GIVEN 250 notifications arriving 10 at a time, slower than the poller reads them
        sender = threading.Thread(target=send, args=(sqs, mapping.queue_url, [f"m{i}" for i in range(250)], 0.02))
        sender.start()
        seen: list[int] = []
        # WHEN the queue is drained while they arrive
        invocations = drain_queue(sqs, mapping, lambda event: seen.append(len(event["Records"])) or {},
                                  more_coming=sender.is_alive)
        sender.join()
        left = sqs.get_queue_attributes(QueueUrl=mapping.queue_url, AttributeNames=["All"])["Attributes"]
    # THEN full batches, then the rest once uploads ended: no small batch cut by a momentarily empty queue
    assert seen == [100, 100, 50]
    assert [invocation.records for invocation in invocations] == seen
    assert all(invocation.seconds >= 0 for invocation in invocations)
    assert (left["ApproximateNumberOfMessages"], left["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")


def test_a_batch_closes_before_6_mb_of_records_and_the_rest_is_delivered_next():
    with mock_aws(), fast_sqs():
        sqs = boto3.client("sqs", region_name="eu-west-3")
        mapping = queue(sqs, batch_size=10_000)
        # GIVEN 30 records of 250 KB (7.5 MB in all)
        for _ in range(30):
            sqs.send_message(QueueUrl=mapping.queue_url, MessageBody="x" * 250_000)
        seen: list[int] = []
        drain_queue(sqs, mapping, lambda event: seen.append(len(event["Records"])) or {})
    # THEN the first invocation holds what fits in 6 MB, the next one the rest
    assert seen == [25, 5]


def test_the_embedded_server_routes_requests_without_listing_moto_on_each_one(monkeypatch):
    from moto import backends

    from verger.embedded import moto_server

    listings = []
    original = backends.list_of_moto_modules
    monkeypatch.setattr(backends, "list_of_moto_modules", lambda: listings.append(1) or original())
    # GIVEN the embedded server; WHEN S3 and SQS requests go through it
    with moto_server():
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        s3.create_bucket(Bucket="photos", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
        for n in range(5):
            s3.put_object(Bucket="photos", Key=f"raw/Kiwi/{n}.jpg", Body=b"jpeg")
        url = sqs.create_queue(QueueName="uploads")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="m")
        # THEN each was routed to its service, and moto's package was listed once for all of them
        assert s3.list_objects_v2(Bucket="photos")["KeyCount"] == 5
        assert len(sqs.receive_message(QueueUrl=url)["Messages"]) == 1
    assert len(listings) == 1
    assert backends.list_of_moto_modules is not original  # the test's wrapper is back after the server
