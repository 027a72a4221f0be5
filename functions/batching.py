"""Turn image uploads into manifests, and write them where the job reads them.

Manifests are cut deterministically from the set of uploads alone (never from arrival order or
time), so a replayed SQS batch yields the same manifests and therefore the same batch ids.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import Any

from botocore.exceptions import ClientError

from contract.layout import manifest_key
from contract.manifest import MAINTAIN_MODE, RETENTION_DAYS, Manifest, ManifestItem, build_manifest
from functions.events import ImageUpload

# S3 answers a lost conditional write with 412 PreconditionFailed, or 409 when two race.
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")


def latest_per_key(uploads: Iterable[ImageUpload]) -> list[ImageUpload]:
    """One upload per key: the latest by S3's sequencer, sorted by (folder, key).

    S3 delivers at least once and a key may be overwritten within a batch; only the newest
    version is worth a step. Sequencers are hex strings of varying length, compared as numbers
    (S3's documented rule is "left-pad with zeros, then compare").
    """
    latest: dict[str, ImageUpload] = {}
    for upload in uploads:
        current = latest.get(upload.key)
        if current is None or _order(upload) > _order(current):
            latest[upload.key] = upload
    return sorted(latest.values(), key=lambda upload: (upload.folder, upload.key))


def pack_by_folder(uploads: Sequence[ImageUpload], max_images: int) -> list[list[ImageUpload]]:
    """Cut folder-sorted uploads into chunks of at most `max_images`, keeping folders whole.

    A folder (class) that fits in the current chunk joins it; one that does not starts a new
    chunk; one larger than `max_images` is cut into full chunks. Whole folders keep a label's
    photos in one step; packing several folders per chunk keeps the number of EMR steps (each
    paying spark-submit start-up, and run one at a time by default) close to the minimum.

    Examples
    --------
    >>> ups = [ImageUpload(f"raw/{d}/{i}.jpg", "e", None, None) for d, n in (("A", 2), ("B", 3)) for i in range(n)]
    >>> [[u.key for u in chunk] for chunk in pack_by_folder(ups, 3)]
    [['raw/A/0.jpg', 'raw/A/1.jpg'], ['raw/B/0.jpg', 'raw/B/1.jpg', 'raw/B/2.jpg']]
    """
    chunks: list[list[ImageUpload]] = []
    current: list[ImageUpload] = []
    for _, folder_uploads in groupby(uploads, key=lambda upload: upload.folder):
        folder = list(folder_uploads)
        if current and len(current) + len(folder) > max_images:
            chunks.append(current)
            current = []
        while len(current) + len(folder) > max_images:
            room = max_images - len(current)
            chunks.append(current + folder[:room])
            current, folder = [], folder[room:]
        current.extend(folder)
    if current:
        chunks.append(current)
    return chunks


def incremental_manifests(
    uploads: Iterable[ImageUpload], bucket: str, max_images: int
) -> list[Manifest]:
    """Deduplicated, folder-grouped manifests of at most `max_images` images each."""
    return [
        build_manifest("incremental", f"s3://{bucket}", [_item(upload) for upload in chunk])
        for chunk in pack_by_folder(latest_per_key(uploads), max_images)
    ]


def listing_manifest(mode: str, bucket: str, nonce: str) -> Manifest:
    """An item-less `full` or `sweep` manifest: the job lists raw/ and inbox/ itself, distributed
    (a million-item listing fits neither this function's memory nor its time). `nonce` (the
    request's or the schedule's time) keeps two requests apart."""
    return build_manifest(mode, f"s3://{bucket}", [], nonce=nonce)


def maintenance_manifest(bucket: str, nonce: str, retention_days: int) -> Manifest:
    """A `maintain` manifest: table upkeep with this snapshot retention; `nonce` (the schedule's
    time) makes a schedule delivered twice one run."""
    return build_manifest(MAINTAIN_MODE, f"s3://{bucket}", [], nonce=nonce, extra={RETENTION_DAYS: retention_days})


def manifest_uri(bucket: str, batch_id: str) -> str:
    return f"s3://{bucket}/{manifest_key(batch_id)}"


def write_manifest(s3: Any, bucket: str, manifest: Manifest) -> bool:
    """Write the manifest once; False when a replay finds it already there.

    The write is conditional, so a manifest a running step may be reading is never rewritten:
    same batch id, same items, first `created_at` kept.
    """
    return put_if_absent(s3, bucket, manifest_key(manifest.batch_id), manifest.to_json().encode())


def put_if_absent(s3: Any, bucket: str, key: str, body: bytes) -> bool:
    """Create `key` unless it exists (`If-None-Match: *`, atomic in S3); False when it did."""
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in CONDITION_FAILED:
            raise
        return False
    return True


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _order(upload: ImageUpload) -> tuple[int, str]:
    sequence = int(upload.sequencer, 16) if upload.sequencer else -1  # hex, checked at parsing
    return sequence, upload.etag


def _item(upload: ImageUpload) -> ManifestItem:
    return ManifestItem(
        key=upload.key, etag=upload.etag, size=upload.size, sequencer=upload.sequencer,
        removed=upload.removed,
    )
