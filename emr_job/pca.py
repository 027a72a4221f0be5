"""A centred PCA that scales with Spark: moments by distributed aggregation, one 1280×1280 eigh.

Spark MLlib's `PCAModel.transform` does not subtract the mean, so its projections are not what a
user of scikit-learn expects; this module fits and applies the centred model itself. No feature
row ever travels to the driver: only per-partition sums (n, Σx, Σxxᵀ) do.
"""
from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Iterator

import numpy as np
import pandas as pd

from contract import layout
from emr_job import blobs

MOMENTS_SCHEMA = "n long, total binary, outer binary"


@dataclass
class PcaModel:
    version: str
    mean: np.ndarray  # (d,) float64
    components: np.ndarray  # (k, d) float64, rows orthonormal
    explained_variance_ratio: np.ndarray  # (d,) float64, all components, descending
    k: int
    target: float
    rows_fitted: int
    fit_seconds: float
    feature_version: str
    created_at: str

    def project(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features → (n, k) float32 coordinates, centred on the stored mean."""
        return ((np.asarray(features, np.float64) - self.mean) @ self.components.T).astype(np.float32)

    def metadata(self) -> dict:
        body = asdict(self)
        for name in ("mean", "components", "explained_variance_ratio"):
            body.pop(name)
        body["explained_variance_ratio"] = self.explained_variance_ratio.tolist()
        body["cumulative_at_k"] = float(self.explained_variance_ratio[: self.k].sum())
        return body


def choose_k(ratios: np.ndarray, target: float) -> int:
    """The smallest k whose cumulative explained variance reaches `target`.

    Examples
    --------
    >>> choose_k(np.array([0.5, 0.3, 0.15, 0.05]), 0.8), choose_k(np.array([0.5, 0.3, 0.15, 0.05]), 0.81)
    (2, 3)
    """
    if not 0 < target <= 1:
        raise ValueError(f"variance target must be in (0, 1], got {target}")
    cumulative = np.cumsum(ratios)
    return int(min(np.searchsorted(cumulative, target - 1e-12) + 1, len(ratios)))


def fit_from_moments(
    n: int, total: np.ndarray, outer: np.ndarray, target: float, fit_seconds: float = 0.0
) -> PcaModel:
    """Eigendecomposition of the sample covariance (n − 1 in the denominator, as scikit-learn).

    Examples
    --------
    >>> x = np.array([[0.0, 0.0], [2.0, 0.1], [4.0, -0.1]])
    >>> model = fit_from_moments(3, x.sum(0), x.T @ x, 0.9)
    >>> model.k, np.round(np.abs(model.components[0]), 3).tolist()
    (1, [1.0, 0.025])
    """
    if n < 2:
        raise ValueError(f"a PCA needs at least 2 feature rows, got {n}")
    mean = total / n  # (d,)
    covariance = (outer - n * np.outer(mean, mean)) / (n - 1)  # (d, d)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    vectors = eigenvectors[:, order].T  # (d, d), one component per row
    # Deterministic signs: the largest entry of each component is positive.
    signs = np.sign(vectors[np.arange(len(vectors)), np.abs(vectors).argmax(axis=1)])
    vectors *= np.where(signs == 0, 1.0, signs)[:, None]
    ratios = eigenvalues / eigenvalues.sum()
    k = choose_k(ratios, target)
    now = datetime.now(timezone.utc)
    return PcaModel(
        version=f"pca-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
        mean=mean,
        components=vectors[:k].copy(),
        explained_variance_ratio=ratios,
        k=k,
        target=target,
        rows_fitted=n,
        fit_seconds=fit_seconds,
        feature_version=layout.FEATURE_VERSION,
        created_at=now.isoformat(timespec="seconds"),
    )


def partial_moments(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas: one row per partition with n, Σx and Σxxᵀ (float64 bytes)."""
    n, total, outer = 0, None, None
    for frame in frames:
        if frame.empty:
            continue
        x = np.stack(frame["features"].to_numpy()).astype(np.float64)  # (rows, d)
        n += len(x)
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
        outer = x.T @ x if outer is None else outer + x.T @ x
    if n:
        yield pd.DataFrame({"n": [n], "total": [total.tobytes()], "outer": [outer.tobytes()]})


def fit(features_df, target: float) -> PcaModel:
    """Fit over a Spark DataFrame with a `features` column (array<float>)."""
    started = time.perf_counter()
    # Few partitions: each sends one d×d matrix (13 MB for d = 1280) up the reduction tree.
    partitions = max(1, features_df.sparkSession.sparkContext.defaultParallelism)
    moments = features_df.select("features").coalesce(partitions).mapInPandas(partial_moments, MOMENTS_SCHEMA)

    def combine(a, b):
        return a[0] + b[0], a[1] + b[1], a[2] + b[2]

    n, total, outer = moments.rdd.map(
        lambda row: (row.n, np.frombuffer(row.total), np.frombuffer(row.outer))
    ).treeReduce(combine)
    dim = len(total)
    return fit_from_moments(n, total, outer.reshape(dim, dim), target, time.perf_counter() - started)


def save(model: PcaModel, warehouse: str) -> None:
    """Write the version's files; readers only see it once the pointer names it."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mean=model.mean,
        components=model.components,
        explained_variance_ratio=model.explained_variance_ratio,
    )
    folder = layout.warehouse_path(warehouse, layout.PCA_DIR, model.version)
    blobs.write_bytes(f"{folder}/model.npz", buffer.getvalue())
    blobs.write_bytes(f"{folder}/model.json", json.dumps(model.metadata(), indent=1).encode())


def load(warehouse: str, version: str) -> PcaModel:
    folder = layout.warehouse_path(warehouse, layout.PCA_DIR, version)
    arrays = np.load(io.BytesIO(blobs.read_bytes(f"{folder}/model.npz")))
    meta = json.loads(blobs.read_bytes(f"{folder}/model.json"))
    return PcaModel(
        version=meta["version"],
        mean=arrays["mean"],
        components=arrays["components"],
        explained_variance_ratio=arrays["explained_variance_ratio"],
        k=meta["k"],
        target=meta["target"],
        rows_fitted=meta["rows_fitted"],
        fit_seconds=meta["fit_seconds"],
        feature_version=meta["feature_version"],
        created_at=meta["created_at"],
    )


def drift(total_sq: float, captured_sq: float, residual_sq: float, rows: int, target: float,
          margin: float) -> dict:
    """How well the stored model fits a batch, from sums over its rows (centred on the stored mean).

    Examples
    --------
    >>> drift(10.0, 9.6, 0.4, 4, 0.95, 0.05)["refit_advised"], drift(10.0, 8.0, 2.0, 4, 0.95, 0.05)["refit_advised"]
    (False, True)
    """
    captured_share = captured_sq / total_sq if total_sq > 0 else 1.0
    return {
        "rows": rows,
        "captured_variance_share": round(captured_share, 6),
        "mean_reconstruction_error": round(residual_sq / rows, 6) if rows else 0.0,
        "threshold": round(target - margin, 6),
        "refit_advised": bool(captured_share < target - margin),
    }


def projection_frame(frame: pd.DataFrame, model: PcaModel) -> pd.DataFrame:
    """(image_key, etag, batch_id, features) rows → projections-table rows plus each row's squared
    norms (centred, and captured) for the drift figures; the executors and the driver share it."""
    x = np.stack(frame["features"].to_numpy()).astype(np.float64)  # (n, d)
    centred = x - model.mean  # (n, d)
    coordinates = centred @ model.components.T  # (n, k)
    return pd.DataFrame(
        {
            "image_key": frame["image_key"].to_numpy(),
            "etag": frame["etag"].to_numpy(),
            "batch_id": frame["batch_id"].to_numpy(),
            "pca_version": model.version,
            "pca": list(coordinates.astype(np.float32)),
            "total_sq": (centred ** 2).sum(axis=1),
            "captured_sq": (coordinates ** 2).sum(axis=1),
        }
    )
