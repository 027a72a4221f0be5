"""A local `<Label>/<image>` folder as a manifest, so `verger run` takes the manifest code path."""
from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from itertools import zip_longest

from contract.layout import is_image_key
from contract.manifest import LISTING_MODES, Manifest, ManifestItem, build_manifest


def manifest_for_folder(images_dir: str, mode: str = "incremental", limit: int | None = None) -> Manifest:
    """Every image below `images_dir`, keyed by its relative path; the etag is the MD5 of its bytes
    (what S3 reports for a single-part upload), so an edited file is seen as a new version.

    With `limit`, images are taken round-robin across label folders, so a small run still covers
    every class it can.
    """
    root = os.path.abspath(images_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    if mode in LISTING_MODES:  # the job lists the folder itself
        return build_manifest(mode, f"file://{root}", [], nonce=datetime.now(timezone.utc).isoformat())
    keys = sample(list_image_keys(root), limit)
    return build_manifest(mode, f"file://{root}", [folder_item(root, key) for key in keys])


def folder_item(root: str, key: str) -> ManifestItem:
    """The item for one file; a symbolic link leading outside the folder is never read: its etag
    names where it leads, and the job quarantines it (`outside_source`)."""
    real, inside = resolved_path(root, key)
    if not inside:
        return ManifestItem(key=key, etag=hashlib.md5(f"outside:{real}".encode(), usedforsecurity=False).hexdigest())
    return ManifestItem(key=key, etag=file_md5(real), size=os.path.getsize(real))


def resolved_path(root: str, key: str) -> tuple[str, bool]:
    """The key's real path (symbolic links resolved), and whether it lies inside `root`."""
    real = os.path.realpath(os.path.join(root, key))
    return real, real.startswith(os.path.join(os.path.realpath(root), ""))


def list_image_keys(root: str) -> list[str]:
    keys = []
    for directory, _, files in os.walk(root):
        for name in files:
            key = os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/")
            if is_image_key(key):
                keys.append(key)
    return sorted(keys)


def sample(keys: list[str], limit: int | None) -> list[str]:
    """Round-robin over parent folders, in sorted order.

    Examples
    --------
    >>> sample(["A/1.jpg", "A/2.jpg", "A/3.jpg", "B/1.jpg"], 3)
    ['A/1.jpg', 'A/2.jpg', 'B/1.jpg']
    """
    if limit is None or limit >= len(keys):
        return keys
    by_folder: dict[str, list[str]] = {}
    for key in keys:
        by_folder.setdefault(os.path.dirname(key), []).append(key)
    interleaved = [key for group in zip_longest(*by_folder.values()) for key in group if key]
    return sorted(interleaved[:limit])


def file_md5(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.md5(handle.read(), usedforsecurity=False).hexdigest()
