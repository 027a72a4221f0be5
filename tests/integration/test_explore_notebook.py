"""notebooks/explore.ipynb, executed against a small store the real job builds: labelled batches,
a batch with broken files (quarantine) and a batch of inbox photos (suggestions)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from contract.manifest import ManifestItem, build_manifest
from emr_job.folders import file_md5
from emr_job.job import JobSettings, run_manifest
from tests.integration.conftest import LABELS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "explore.ipynb"
STORE_LABELS = LABELS[:6]
FIRST, SECOND, INBOX = 12, 4, 1  # frames per label in each batch
BROKEN = {"Kiwi/not-a-photo.jpg": b"this is not a JPEG", "Banana/empty.jpg": b""}


def uploads_folder(fruits: Path, root: Path) -> dict[str, list[str]]:
    """Frames linked from the shared data as `<Label>/<name>` and `inbox/<name>`, plus two broken
    files; returns the keys of each batch."""
    batches: dict[str, list[str]] = {"first": [], "second": [], "inbox": []}
    for label in STORE_LABELS:
        (root / label).mkdir(parents=True)
        names = sorted(os.listdir(fruits / label))[::7]
        for batch, chosen in (("first", names[:FIRST]), ("second", names[FIRST:FIRST + SECOND])):
            for name in chosen:
                (root / label / name).symlink_to(fruits / label / name)
                batches[batch].append(f"{label}/{name}")
        (root / "inbox").mkdir(exist_ok=True)
        for name in names[FIRST + SECOND:FIRST + SECOND + INBOX]:
            key = f"inbox/{label.replace(' ', '_')}-{name}"
            (root / key).symlink_to(fruits / label / name)
            batches["inbox"].append(key)
    for key, content in BROKEN.items():
        (root / key).write_bytes(content)
        batches["second"].append(key)
    return batches


def build_store(spark, fruits: Path, weights: str, root: Path) -> Path:
    """Three batches through the real job: a first labelled batch (fits the PCA), a second one
    with broken files (projected with the stored PCA, drift measured), then inbox photos."""
    uploads, warehouse = root / "uploads", root / "warehouse"
    batches = uploads_folder(fruits, uploads)
    settings = JobSettings(str(warehouse), weights)
    for keys in batches.values():
        items = [ManifestItem(key, file_md5(str(uploads / key))) for key in keys]
        run_manifest(spark, build_manifest("incremental", f"file://{uploads}", items), settings)
    return warehouse


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, spark, fruits, weights) -> Path:
    return build_store(spark, fruits, weights, tmp_path_factory.mktemp("explore"))
