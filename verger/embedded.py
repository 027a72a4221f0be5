"""The stack on one machine: moto's S3 + SQS server on loopback, the resources `template.yaml`
declares, and a poller that invokes the real handler the way Lambda's SQS event source does.
"""
from __future__ import annotations

import importlib
import itertools
import json
import logging
import os
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from functions import clients
from verger.moto_sqs import fast_sqs
from verger.template import Resolver, function_environment, load_template, resource_properties

REGION = "eu-west-3"
ACCOUNT_ID = "123456789012"  # moto's default account
STACK_NAME = "verger-demo"
FUNCTION = "TriggerFunction"
QUEUE = "UploadQueue"
DEAD_LETTER_QUEUE = "UploadDeadLetterQueue"
BUCKET_RESOURCE = "Bucket"
# Lambda hands at most 6 MB of records to one invocation, whatever the batch size.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
SQS_RECEIVE_MAX = 10
IDLE_POLL_S = 0.2  # an empty queue while uploads go on is polled again after this
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


@contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables for the block (child processes inherit them), then restore the old ones."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port, with dummy credentials; yields its endpoint URL.

    Everything boto3 creates inside the block (here and in child processes) talks to it. moto
    keeps its state per process, so each server starts empty (another stack of the same process
    would otherwise still be there).
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    with patched_environ({**DUMMY_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}), complete_notifications(), \
            fast_sqs(), listed_modules_once():
        server.start()
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30)
        clients.client.cache_clear()  # the handler's cached clients point at the previous server
        try:
            yield endpoint
        finally:
            server.stop()


@contextmanager
def complete_notifications() -> Iterator[None]:
    """Make moto's S3 notifications carry the fields real S3 always sends.

    moto (5.2) leaves out `userIdentity`, `requestParameters`, `responseElements`, the bucket's
    `ownerIdentity` and the `sequencer`; the handler parses notifications strictly (a body missing
    them is poison for the DLQ), so the emulated S3, not the handler, is completed here.
    """
    from moto.s3 import notifications

    original = notifications._get_s3_event
    sequencer = itertools.count(1)

    def complete(*args: Any, **kwargs: Any) -> dict[str, Any]:
        event = original(*args, **kwargs)
        for record in event["Records"]:
            record.setdefault("userIdentity", {"principalId": "AWS:DEMO"})
            record.setdefault("requestParameters", {"sourceIPAddress": "127.0.0.1"})
            record.setdefault("responseElements", {"x-amz-request-id": uuid.uuid4().hex[:16].upper(),
                                                   "x-amz-id-2": uuid.uuid4().hex})
            record["s3"]["bucket"].setdefault("ownerIdentity", {"principalId": "DEMO"})
            record["s3"]["object"].setdefault("sequencer", f"{next(sequencer):018X}")
        return event

    notifications._get_s3_event = complete
    try:
        yield
    finally:
        notifications._get_s3_event = original


@contextmanager
def listed_modules_once() -> Iterator[None]:
    """Let moto's server list its own package once, not on every request.

    moto (5.2) routes each request by asking whether the host names one of its service folders,
    which lists the package directory and stats ~170 entries each time: about 1 ms of CPU per
    request, a fifth of an upload's cost in the demo. The folders do not change while it runs.
    """
    from moto import backends

    original = backends.list_of_moto_modules
    modules = tuple(original())
    backends.list_of_moto_modules = lambda: modules
    try:
        yield
    finally:
        backends.list_of_moto_modules = original


@dataclass(frozen=True)
class EventSourceMapping:
    """The SQS event source of the function, as the template declares it."""

    queue_url: str
    queue_arn: str
    batch_size: int
    batching_window_s: float


@dataclass(frozen=True)
class Stack:
    bucket: str
    queue: EventSourceMapping
    dead_letter_queue_url: str
    function_environment: dict[str, str]
    handler: str
    timeout_s: int
    function_name: str


def create_stack(bucket: str, parameters: Mapping[str, str]) -> Stack:
    """Create the bucket, the queues and the notifications against the current endpoint.

    `parameters` override the template's parameter defaults (`BatchingWindowSeconds`, …).
    """
    import boto3

    template = load_template()
    sqs, s3 = boto3.client("sqs"), boto3.client("s3")
    # The demo launches locally: no cluster or Serverless application is rendered into the
    # environment; the alert topic is real (moto's SNS), so an exhausted batch can be seen.
    alert_topic = boto3.client("sns").create_topic(Name=f"{STACK_NAME}-alerts")["TopicArn"]
    refs = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT_ID, "AWS::Partition": "aws",
            "AWS::StackName": STACK_NAME, "BucketName": bucket, "Launcher": "local", "AlertTopic": alert_topic,
            **parameters}
    dlq_url, refs[f"{DEAD_LETTER_QUEUE}.Arn"] = create_queue(sqs, template, DEAD_LETTER_QUEUE, Resolver(template, refs))
    queue_url, refs[f"{QUEUE}.Arn"] = create_queue(sqs, template, QUEUE, Resolver(template, refs))
    resolver = Resolver(template, refs)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    notifications = resolver.resolve(resource_properties(template, BUCKET_RESOURCE)["NotificationConfiguration"])
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration=notification_configuration(notifications)
    )
    function = resource_properties(template, FUNCTION)
    (source,) = [event["Properties"] for event in function["Events"].values() if event["Type"] == "SQS"]
    source = resolver.resolve(source)
    return Stack(
        bucket=bucket,
        queue=EventSourceMapping(queue_url, refs[f"{QUEUE}.Arn"], int(source["BatchSize"]),
                                 float(source.get("MaximumBatchingWindowInSeconds", 0))),
        dead_letter_queue_url=dlq_url,
        function_environment=function_environment(template, FUNCTION, resolver),
        handler=function["Handler"],
        timeout_s=int(function.get("Timeout", 3)),
        function_name=str(resolver.resolve(function["FunctionName"])),
    )


def create_queue(sqs: Any, template: dict[str, Any], name: str, resolver: Resolver) -> tuple[str, str]:
    """A queue with the template's properties as SQS attributes; returns its URL and ARN."""
    properties = resolver.resolve(resource_properties(template, name))
    tags = {tag["Key"]: tag["Value"] for tag in properties.pop("Tags", [])}
    attributes = {key: attribute_text(value) for key, value in properties.items()}
    url = sqs.create_queue(QueueName=f"{STACK_NAME}-{name}", Attributes=attributes, tags=tags)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def attribute_text(value: Any) -> str:
    """SQS attributes are strings: JSON for a redrive policy, lowercase for booleans."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def notification_configuration(cfn: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation's NotificationConfiguration in the shape of the S3 API."""
    return {
        "QueueConfigurations": [
            {
                "QueueArn": rule["Queue"],
                "Events": [rule["Event"]],
                "Filter": {"Key": {"FilterRules": rule["Filter"]["S3Key"]["Rules"]}},
            }
            for rule in cfn.get("QueueConfigurations", [])
        ]
    }


def load_handler(dotted: str) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """Import `module.function` as Lambda does, after the environment is in place."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass
class LambdaContext:
    """The parts of Lambda's context object that Powertools reads."""

    function_name: str
    timeout_s: int
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = self.aws_request_id

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class Invocation:
    records: int
    failed_message_ids: tuple[str, ...]
    bodies: tuple[str, ...]  # kept so the demo can deliver them again
    seconds: float = 0.0  # the handler's wall time (locally: its Spark step included)


def drain_queue(
    sqs: Any,
    mapping: EventSourceMapping,
    invoke: Callable[[dict[str, Any]], dict[str, Any]],
    more_coming: Callable[[], bool] = lambda: False,
    on_invocation: Callable[[Invocation], None] = lambda invocation: None,
) -> list[Invocation]:
    """Invoke the handler with batches from the queue until it is empty, as the event source does.

    A batch closes at the batch size, at 6 MB of records, when the batching window has passed, or
    when the queue is empty and `more_coming()` says no upload is still under way (waiting out the
    window then would only add idle time). While uploads go on, an empty queue is polled again.
    Only the messages the handler did not report in `batchItemFailures` are deleted; failed ones
    become visible again after the visibility timeout and reach the DLQ after `maxReceiveCount`
    receives. A handler that raises fails the whole batch: nothing is deleted and the error
    propagates.

    While the handler runs (locally: its Spark step), the next batch is gathered in the background,
    as Lambda's pollers keep reading while a function works; the handled batch's messages are then
    deleted on the same poller thread, after that gathering.
    """
    invocations = []
    with ThreadPoolExecutor(1, thread_name_prefix="sqs-poller") as poller:
        pending = poller.submit(gather_batch, sqs, mapping, more_coming)
        while True:
            messages = pending.result()
            if not messages:
                if more_coming():
                    time.sleep(IDLE_POLL_S)
                    pending = poller.submit(gather_batch, sqs, mapping, more_coming)
                    continue
                return invocations
            pending = poller.submit(gather_batch, sqs, mapping, more_coming)
            started = time.perf_counter()
            response = invoke(sqs_event(messages, mapping.queue_arn))
            seconds = time.perf_counter() - started
            failed = tuple(item["itemIdentifier"] for item in response.get("batchItemFailures", []))
            poller.submit(delete_messages, sqs, mapping.queue_url,
                          [m for m in messages if m["MessageId"] not in failed]).result()
            invocations.append(Invocation(len(messages), failed, tuple(m["Body"] for m in messages), seconds))
            on_invocation(invocations[-1])


def gather_batch(sqs: Any, mapping: EventSourceMapping, more_coming: Callable[[], bool]) -> list[dict[str, Any]]:
    batch: list[dict[str, Any]] = []
    size = 0
    started = time.monotonic()
    while len(batch) < mapping.batch_size and time.monotonic() - started < max(mapping.batching_window_s, 1):
        received = sqs.receive_message(
            QueueUrl=mapping.queue_url, AttributeNames=["All"], MessageAttributeNames=["All"],
            MaxNumberOfMessages=min(SQS_RECEIVE_MAX, mapping.batch_size - len(batch)), WaitTimeSeconds=0,
        ).get("Messages", [])
        if not received:
            if batch and more_coming():
                time.sleep(IDLE_POLL_S)
                continue
            break
        for position, message in enumerate(received):
            size += len(message["Body"].encode())
            if size > MAX_PAYLOAD_BYTES and batch:
                release(sqs, mapping.queue_url, received[position:])
                return batch
            batch.append(message)
    return batch


def release(sqs: Any, queue_url: str, messages: list[dict[str, Any]]) -> None:
    """Make received messages visible again at once (they did not fit in this invocation)."""
    sqs.change_message_visibility_batch(
        QueueUrl=queue_url,
        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                 for i, m in enumerate(messages)],
    )


def delete_messages(sqs: Any, queue_url: str, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), SQS_RECEIVE_MAX):
        chunk = messages[start:start + SQS_RECEIVE_MAX]
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
        )


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event Lambda builds from received messages."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "messageAttributes": message.get("MessageAttributes", {}),
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
            for message in messages
        ]
    }


def redeliver(sqs: Any, queue_url: str, bodies: list[str]) -> None:
    """Send bodies again, as SQS's at-least-once delivery may: the handler must not redo their work."""
    for start in range(0, len(bodies), SQS_RECEIVE_MAX):
        chunk = bodies[start:start + SQS_RECEIVE_MAX]
        sqs.send_message_batch(
            QueueUrl=queue_url, Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)]
        )
