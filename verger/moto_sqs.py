"""Make moto's SQS keep its speed with thousands of messages in flight.

Measured on moto 5.2.5 (1,000 S3-notification-sized messages, 10 per call, in process): sending
took 21 s and receiving 128 s, because every SendMessage and (three times) every received message evaluates
`Queue.attributes`, whose three `ApproximateNumberOf…` counters walk every message and read the
clock twice per message (`unix_time_millis` goes through `datetime`). Deleting one message walks
the list twice more. Each call is O(messages), so a wave of n uploads costs O(n²).

The fix, applied for the embedded server's lifetime like `complete_notifications`:

- `Queue.attributes` leaves the counters out; `get_queue_attributes` adds them (one pass, one
  clock read) only when they are asked for: sending and receiving never ask;
- the retention check of each received message reads the one attribute it needs;
- `Queue.messages` (the visible ones) reads the clock once per call, not twice per message;
- a standard queue has no pending message groups (only FIFO queues use them);
- `Queue.delete_message` finds the message through a receipt-handle index;
- receipt handles come from one `os.urandom` read (moto draws 185 random letters one by one).

Semantics are moto's: same results, same errors (tested against the unpatched backend).
"""
from __future__ import annotations

import os
import string
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Receipt handles as moto makes them (185 lowercase letters), from one random read instead of 185.
_LOWERCASE = bytes(ord(string.ascii_lowercase[byte % 26]) for byte in range(256))
COUNTERS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesDelayed",
    "ApproximateNumberOfMessagesNotVisible",
)


def receipt_handle() -> str:
    return os.urandom(185).translate(_LOWERCASE).decode("ascii")


def approximate_counts(queue: Any, now_ms: float) -> dict[str, int]:
    """The three counters in one pass, with moto's definitions of visible and delayed."""
    visible = delayed = not_visible = 0
    for message in queue._messages:
        is_delayed = now_ms < message.delayed_until
        delayed += is_delayed
        if now_ms > message.visible_at:
            visible += not is_delayed
        else:
            not_visible += 1
    return {COUNTERS[0]: visible, COUNTERS[1]: delayed, COUNTERS[2]: not_visible}


@contextmanager
def fast_sqs() -> Iterator[None]:
    """Patch moto's SQS models for the block; restore them after."""
    from moto.sqs import models
    from moto.sqs.exceptions import ReceiptHandleIsInvalid

    queue_class, backend_class = models.Queue, models.SQSBackend
    originals = {
        (models, "generate_receipt_handle"): models.generate_receipt_handle,
        (queue_class, "attributes"): queue_class.__dict__["attributes"],
        (queue_class, "messages"): queue_class.__dict__["messages"],
        (queue_class, "pending_message_groups"): queue_class.__dict__["pending_message_groups"],
        (queue_class, "delete_message"): queue_class.__dict__["delete_message"],
        (backend_class, "get_queue_attributes"): backend_class.__dict__["get_queue_attributes"],
        (backend_class, "is_message_valid_based_on_retention_period"):
            backend_class.__dict__["is_message_valid_based_on_retention_period"],
    }
    original_attributes = originals[(queue_class, "attributes")].fget
    original_get_attributes = originals[(backend_class, "get_queue_attributes")]
    original_groups = originals[(queue_class, "pending_message_groups")].fget

    class WithoutCounters:
        """The queue as `Queue.attributes` sees it, minus the counters."""

        BASE_ATTRIBUTES = [name for name in queue_class.BASE_ATTRIBUTES if name not in COUNTERS]

        def __init__(self, queue: Any) -> None:
            self._queue = queue

        def __getattr__(self, name: str) -> Any:
            return getattr(self._queue, name)

    def attributes(self: Any) -> dict[str, Any]:
        return original_attributes(WithoutCounters(self))

    def get_queue_attributes(self: Any, queue_name: str, attribute_names: list[str]) -> dict[str, Any]:
        result = original_get_attributes(self, queue_name, attribute_names)
        wanted = COUNTERS if "All" in attribute_names else [n for n in attribute_names if n in COUNTERS]
        if wanted:
            counts = approximate_counts(self.get_queue(queue_name), models.unix_time_millis())
            result = {**result, **{name: counts[name] for name in wanted}}
        return result

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retain_until = int(self.get_queue(queue_name).message_retention_period) + message.sent_timestamp / 1000
        return retain_until > models.unix_time()

    def messages(self: Any) -> list[Any]:
        now = models.unix_time_millis()
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    def pending_message_groups(self: Any) -> set[str]:
        return original_groups(self) if self.fifo_queue else set()

    def delete_message(self: Any, receipt_handle: str) -> None:
        if receipt_handle in self.deleted_messages:
            return  # moto deletes a deleted message again without error
        index = self.__dict__.setdefault("_verger_handle_index", {})
        message = index.get(receipt_handle)
        if message is None:  # handles issued since the last rebuild
            index.clear()
            index.update({handle: m for m in self._messages for handle in m.all_receipt_handles})
            message = index.get(receipt_handle)
        for handle in message.all_receipt_handles if message else ():
            index.pop(handle, None)
        try:
            self._messages.remove(message)
        except ValueError:  # unknown, or moved to the dead-letter queue
            raise ReceiptHandleIsInvalid() from None
        self.pending_messages.discard(message)
        self.deleted_messages.update(message.all_receipt_handles)

    replacements = {
        (models, "generate_receipt_handle"): receipt_handle,
        (queue_class, "attributes"): property(attributes),
        (queue_class, "messages"): property(messages),
        (queue_class, "pending_message_groups"): property(pending_message_groups),
        (queue_class, "delete_message"): delete_message,
        (backend_class, "get_queue_attributes"): get_queue_attributes,
        (backend_class, "is_message_valid_based_on_retention_period"): is_message_valid_based_on_retention_period,
    }
    for (owner, name), replacement in replacements.items():
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)
