"""The manifest: the one message the trigger sends the job.

It is plain JSON so that both halves (and a person with `aws s3 cp … -`) can read it, and versioned
so that a job never guesses at a shape it does not know.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable
from urllib.parse import urlparse

MANIFEST_VERSION = 1
MODES = ("incremental", "full", "sweep", "maintain")
# `maintain`: table upkeep (compaction, snapshot expiry, orphan files) instead of a batch of photos;
# `extra` carries the snapshot retention in days, which bounds how long an erased photo's bytes
# stay on storage.
MAINTAIN_MODE = "maintain"
RETENTION_DAYS = "retention_days"
# In these modes the job lists the source itself (raw/ and inbox/, distributed) instead of reading
# items: a million-photo listing fits neither a Lambda nor a manifest. Their items stay empty and a
# nonce (the request's time or id) keeps two requests apart.
LISTING_MODES = ("full", "sweep")
SOURCE_SCHEMES = ("s3", "file")
# The batch id names files and folders (manifests/<id>.json, batch_id=<id>/, reports/<id>.json):
# one plain path segment, whoever wrote the manifest.
BATCH_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ManifestError(ValueError):
    """A manifest that the job must refuse, with the reason in the message."""


@dataclass(frozen=True)
class ManifestItem:
    """One image to process; `key` is decoded (spaces, unicode) and relative to the source.

    `removed` marks an `ObjectRemoved` notification: the job erases the key's rows unless the
    object exists again by then (the etag of a removal is empty: S3 sends none).
    """

    key: str
    etag: str
    size: int | None = None
    sequencer: str | None = None
    removed: bool = False


@dataclass(frozen=True)
class Manifest:
    """A batch of images for one step.

    `source` is where the keys live: `s3://bucket` on AWS and in the embedded mode, `file:///dir`
    for a local folder. `batch_id` is derived from the content, so a replayed event gives the same id.
    """

    batch_id: str
    mode: str
    source: str
    items: tuple[ManifestItem, ...]
    created_at: str
    version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    nonce: str = ""

    @property
    def bucket(self) -> str | None:
        parsed = urlparse(self.source)
        return parsed.netloc if parsed.scheme == "s3" else None

    def to_json(self) -> str:
        body = asdict(self)
        body["items"] = [asdict(item) for item in self.items]
        return json.dumps(body, ensure_ascii=False, indent=1, sort_keys=True)


def batch_id_for(mode: str, source: str, items: Iterable[ManifestItem], nonce: str = "") -> str:
    """Content hash of what the batch processes (and of its nonce); time and order play no part.

    Examples
    --------
    >>> a = ManifestItem("raw/Apple/1.jpg", "e1")
    >>> b = ManifestItem("raw/Kiwi/2.jpg", "e2")
    >>> batch_id_for("incremental", "s3://b", [a, b]) == batch_id_for("incremental", "s3://b", [b, a])
    True
    >>> batch_id_for("sweep", "s3://b", [], "2026-11-23T00:00:00Z") == batch_id_for("sweep", "s3://b", [])
    False
    """
    digest = hashlib.sha256(f"{mode}\n{source}\n".encode())
    if nonce:
        digest.update(f"nonce\0{nonce}\n".encode())
    for key, etag, removed in sorted({(item.key, item.etag, item.removed) for item in items}):
        digest.update(f"{key}\0{etag}{chr(0) + 'removed' if removed else ''}\n".encode())
    return f"{mode[:4]}-{digest.hexdigest()[:20]}"


def build_manifest(
    mode: str,
    source: str,
    items: Iterable[ManifestItem],
    created_at: datetime | None = None,
    extra: dict[str, Any] | None = None,
    nonce: str = "",
) -> Manifest:
    """Deduplicate items by key (last one wins) and seal them under a content-derived batch id."""
    by_key: dict[str, ManifestItem] = {}
    for item in items:
        by_key[item.key] = item
    unique = tuple(sorted(by_key.values(), key=lambda item: item.key))
    manifest = Manifest(
        batch_id=batch_id_for(mode, source, unique, nonce),
        mode=mode,
        source=source.rstrip("/"),
        items=unique,
        created_at=(created_at or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        extra=dict(extra or {}),
        nonce=nonce,
    )
    validate(manifest)
    return manifest


def parse_manifest(text: str | bytes) -> Manifest:
    """Parse and validate, naming the first problem found."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"manifest is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ManifestError(f"manifest must be a JSON object, got {type(body).__name__}")
    version = body.get("version")
    if version != MANIFEST_VERSION:
        raise ManifestError(
            f"unknown manifest version {version!r}: this job reads version {MANIFEST_VERSION}"
        )
    for name in ("batch_id", "mode", "source", "items", "created_at"):
        if name not in body:
            raise ManifestError(f"manifest is missing the field {name!r}")
    if not isinstance(body["items"], list):
        raise ManifestError("manifest field 'items' must be a list")
    items = []
    for index, raw in enumerate(body["items"]):
        if not isinstance(raw, dict) or not raw.get("key"):
            raise ManifestError(f"manifest item {index} needs a non-empty 'key'")
        removed = raw.get("removed", False)
        if not isinstance(removed, bool):
            raise ManifestError(f"manifest item {index}: 'removed' must be true or false")
        if not removed and not raw.get("etag"):
            raise ManifestError(f"manifest item {index} needs a non-empty 'etag' (only removals have none)")
        items.append(
            ManifestItem(
                key=str(raw["key"]),
                etag=str(raw.get("etag") or ""),
                size=raw.get("size"),
                sequencer=raw.get("sequencer"),
                removed=removed,
            )
        )
    manifest = Manifest(
        batch_id=str(body["batch_id"]),
        mode=str(body["mode"]),
        source=str(body["source"]),
        items=tuple(items),
        created_at=str(body["created_at"]),
        version=version,
        extra=dict(body.get("extra") or {}),
        nonce=str(body.get("nonce") or ""),
    )
    validate(manifest)
    return manifest


def validate(manifest: Manifest) -> None:
    if manifest.mode not in MODES:
        raise ManifestError(f"unknown mode {manifest.mode!r}: expected one of {', '.join(MODES)}")
    check_uri(manifest.source, "source", SOURCE_SCHEMES)
    if urlparse(manifest.source).scheme == "s3" and urlparse(manifest.source).path.strip("/"):
        raise ManifestError(f"source {manifest.source!r} must be a bucket (s3://bucket), not a prefix")
    if not manifest.batch_id:
        raise ManifestError("manifest field 'batch_id' is empty")
    if manifest.mode in LISTING_MODES and manifest.items:
        raise ManifestError(
            f"a {manifest.mode!r} manifest carries no items: the job lists the source itself "
            f"(got {len(manifest.items)})"
        )
    if manifest.mode == MAINTAIN_MODE:
        check_maintenance(manifest)
    if not BATCH_ID_PATTERN.fullmatch(manifest.batch_id):
        raise ManifestError(
            f"manifest batch_id {manifest.batch_id!r} is not one plain name (letters, digits, '.', '_', '-')"
        )


def check_maintenance(manifest: Manifest) -> None:
    """A `maintain` manifest names no photos and says how many days of snapshots to keep."""
    if manifest.items:
        raise ManifestError(f"a 'maintain' manifest carries no items (got {len(manifest.items)})")
    days = manifest.extra.get(RETENTION_DAYS)
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 <= days < 10_000:
        raise ManifestError(f"a 'maintain' manifest needs extra.{RETENTION_DAYS}, a number of days "
                            f"from 0 to 9999 (got {days!r})")


def check_uri(uri: str, what: str, schemes: tuple[str, ...]) -> None:
    """Raise ManifestError unless `uri` is `<scheme>://…` with one of `schemes` and a location."""
    parsed = urlparse(uri)
    if parsed.scheme not in schemes:
        raise ManifestError(
            f"bad {what} URI {uri!r}: scheme must be one of {', '.join(s + '://' for s in schemes)}"
        )
    if parsed.scheme == "s3" and not parsed.netloc:
        raise ManifestError(f"bad {what} URI {uri!r}: no bucket")
    if parsed.scheme == "file" and (parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/")):
        raise ManifestError(f"bad {what} URI {uri!r}: file URIs need an absolute path (file:///dir)")
