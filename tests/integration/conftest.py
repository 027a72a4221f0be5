"""Batches of real Fruits-360 images, run through the real job on the session's local Spark."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contract.manifest import Manifest, ManifestItem, build_manifest
from emr_job.folders import file_md5

pytestmark = pytest.mark.integration

LABELS = (
    "Apple Braeburn", "Banana", "Cherry 1", "Kiwi", "Lemon", "Mango", "Onion White",
    "Pear", "Pineapple", "Strawberry", "Tomato 1", "Walnut",
)


def fruit_manifest(fruits: Path, labels=LABELS, start: int = 0, count: int = 30, step: int = 1,
                   skip_every: int | None = None, mode: str = "incremental") -> Manifest:
    """`count` images per label from position `start` of each class's file order, every `step`-th,
    leaving out every `skip_every`-th position (the ones a test holds back)."""
    items = []
    for label in labels:
        positions = [p for p in range(len(os.listdir(fruits / label))) if not skip_every or p % skip_every]
        names = [sorted(os.listdir(fruits / label))[p] for p in positions[start::step][:count]]
        items += [ManifestItem(f"{label}/{name}", file_md5(str(fruits / label / name))) for name in names]
    return build_manifest(mode, f"file://{fruits}", items)


def run_verger_killed_at_commit(args: list[str]) -> subprocess.CompletedProcess:
    """Run `verger ARGS` in a child that SIGKILLs itself when its first Iceberg commit begins."""
    script = (
        "import os, signal, sys\n"
        "import pyiceberg.table as table\n"
        "table.Transaction.commit_transaction = lambda self: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from verger.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)


@pytest.fixture(params=["driver", "executors"])
def executed_in(request, monkeypatch) -> str:
    """Runs the test's keyed batches down each of the two paths they can take: a small batch in
    the driver (emr_job.driver_batch), or in the executors (forced by a negative driver limit,
    which even a batch with nothing left to extract exceeds)."""
    if request.param == "executors":
        monkeypatch.setattr("emr_job.job.DRIVER_PHOTOS", -1)
    return request.param
