"""Where the shared data lives, and one local Spark session for every integration test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VERGER_SHARED", ROOT.parent / "shared")).resolve()
FRUITS = Path(os.environ.get("VERGER_FRUITS", SHARED / "data" / "fruits-360")).resolve()
WEIGHTS = Path(
    os.environ.get(
        "VERGER_WEIGHTS", SHARED / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    )
).resolve()


def require(path: Path, what: str) -> Path:
    """Integration tests need the shared data; its absence is an error, not a skip."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: set VERGER_SHARED (or the specific variable)")
    return path


@pytest.fixture(scope="session")
def fruits() -> Path:
    return require(FRUITS, "Fruits-360 images (VERGER_FRUITS)")


@pytest.fixture(scope="session")
def weights() -> str:
    return str(require(WEIGHTS, "MobileNetV2 no-top weights (VERGER_WEIGHTS)"))


@pytest.fixture(scope="session")
def spark():
    from emr_job.session import get_session

    session = get_session("verger-tests", cores=2)
    yield session
    session.stop()
