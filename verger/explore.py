"""The store, read for a person exploring it (notebooks/explore.ipynb): pyiceberg into Arrow and
pandas, no Spark. The catalog is the job's own (`emr_job.store.open_catalog`): the SQLite file of a
local warehouse, or pyiceberg's configuration (Glue) for `s3://…/warehouse`. Large columns (the
1280-d features) are never read: the maps and the neighbours use the stored PCA projections.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image
from pyiceberg.expressions import AlwaysTrue, EqualTo

from contract import layout
from contract.manifest import MAINTAIN_MODE
from emr_job import blobs, store
from emr_job.classifier import unit_rows
from emr_job.fetch import fetch_all
from verger import report
from verger.template import load_template

NO_LABEL = "(inbox)"
BATCH_REPORTS_TABLE = "batch_reports"  # the Glue table over warehouse/reports/ (template.yaml)
VECTOR_COLUMNS = ("features", "pca")  # never loaded for SQL: the saved queries do not need them


@dataclass
class Store:
    """An opened warehouse: its root URI and its Iceberg tables (None before a table's first commit)."""

    warehouse: str
    tables: dict[str, Any]

    def read(self, name: str, columns: tuple[str, ...], row_filter=None) -> pd.DataFrame:
        table = self.tables[name]
        if table is None:
            return pd.DataFrame(columns=list(columns))
        return table.scan(row_filter=AlwaysTrue() if row_filter is None else row_filter,
                          selected_fields=columns).to_pandas()

    @property
    def pca_version(self) -> str | None:
        projections = self.tables[layout.PROJECTIONS_TABLE]
        return projections.properties.get(layout.CURRENT_PCA_PROPERTY) if projections is not None else None


def open_store(warehouse: str) -> Store:
    """Open a warehouse read-only; a local path without a catalog is an error, not an empty store."""
    root = store.warehouse_root(warehouse)
    if store.is_local(warehouse) and not os.path.exists(os.path.join(root, layout.LOCAL_CATALOG_FILE)):
        raise FileNotFoundError(
            f"no Verger warehouse at {root} (no {layout.LOCAL_CATALOG_FILE}): run `verger demo` or `verger run` first"
        )
    catalog = store.open_catalog(warehouse, create_namespace=False)
    names = (layout.FEATURES_TABLE, layout.PROJECTIONS_TABLE, layout.QUARANTINE_TABLE, layout.SUGGESTIONS_TABLE)
    return Store(root, {name: store.load_table(catalog, name) for name in names})


def latest_rows(frame: pd.DataFrame, time_column: str = "ingested_at") -> pd.DataFrame:
    """The current row per image key: the latest one wins (a re-upload supersedes)."""
    ordered = frame.sort_values(["image_key", time_column, "batch_id"])
    return ordered.drop_duplicates("image_key", keep="last").reset_index(drop=True)


def photos(data: Store) -> pd.DataFrame:
    """image_key, label, etag, batch_id, ingested_at of every current photo (no feature vectors)."""
    rows = latest_rows(data.read(layout.FEATURES_TABLE, ("image_key", "label", "etag", "batch_id", "ingested_at")))
    rows["label"] = rows["label"].fillna(NO_LABEL)
    return rows


def counts_by(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    return rows.groupby(column).size().rename("photos").sort_values(ascending=False).reset_index()


def batch_reports(data: Store, limit: int | None = None) -> list[dict]:
    """The batches' reports, oldest first (the `limit` most recent if given); the scheduled upkeep
    runs' reports lie beside them (the reconciliation looks there) but describe no photos."""
    folder = layout.warehouse_path(data.warehouse, layout.REPORTS_DIR)
    uris = [layout.warehouse_path(folder, name) for name in list_names(folder) if name.endswith(".json")]
    batches = [report for report in map(json.loads, map(blobs.read_bytes, uris)) if report.get("mode") != MAINTAIN_MODE]
    reports = sorted(batches, key=lambda r: r["ingested_at"])
    return reports[-limit:] if limit else reports


def list_names(folder: str) -> list[str]:
    """File names directly under a local folder or an S3 prefix."""
    if store.is_local(folder):
        return sorted(os.listdir(blobs.local_path(folder))) if os.path.isdir(blobs.local_path(folder)) else []
    bucket, _, prefix = folder.removeprefix("s3://").partition("/")
    pages = blobs.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    return sorted(item["Key"].rsplit("/", 1)[-1] for page in pages for item in page.get("Contents", []))


def batches(reports: list[dict]) -> pd.DataFrame:
    """One row per batch (the demo report's columns), named by when it started."""
    return pd.DataFrame([report.report_row(r, r["ingested_at"][:16].replace("T", " ")) for r in reports])


def quarantine(data: Store) -> pd.DataFrame:
    """Quarantined photos, with whether a later run stored the same upload after all."""
    rows = data.read(layout.QUARANTINE_TABLE, ("image_key", "etag", "label", "batch_id", "ingested_at", "reason", "detail"))
    rows = rows.merge(photos(data)[["image_key", "etag"]], on=["image_key", "etag"], how="left", indicator=True)
    rows["stored_later"] = rows.pop("_merge") == "both"
    return rows.sort_values("ingested_at", ascending=False).reset_index(drop=True)


def pca_models(data: Store, reports: list[dict]) -> list[dict]:
    """Metadata of every PCA version a batch fitted (oldest first), and of the current one."""
    versions = [r["pca"]["version"] for r in reports if r["pca"].get("action") == "refit"]
    versions = list(dict.fromkeys([*versions, *([data.pca_version] if data.pca_version else [])]))
    folder = layout.warehouse_path(data.warehouse, layout.PCA_DIR)
    return [json.loads(blobs.read_bytes(layout.warehouse_path(folder, v, "model.json"))) for v in versions]


def points(data: Store) -> pd.DataFrame:
    """image_key, label, pca (k floats) of every current photo under the current PCA version."""
    if data.pca_version is None:
        return pd.DataFrame(columns=["image_key", "etag", "label", "pca"])
    projected = data.read(layout.PROJECTIONS_TABLE, ("image_key", "etag", "pca"),
                          EqualTo("pca_version", data.pca_version)).drop_duplicates(["image_key", "etag"])
    return photos(data)[["image_key", "etag", "label", "batch_id"]].merge(projected, on=["image_key", "etag"])


def map_frame(projected: pd.DataFrame) -> pd.DataFrame:
    """The first two components, as `report.plot_map` draws them."""
    coordinates = np.stack(projected["pca"].to_numpy())
    return projected[["image_key", "label"]].assign(pc1=coordinates[:, 0], pc2=coordinates[:, 1])


def nearest(projected: pd.DataFrame, image_key: str, count: int = 8) -> pd.DataFrame:
    """The `count` stored photos most cosine-similar to `image_key` in PCA space (the suggestions' measure)."""
    matches = projected.index[projected["image_key"] == image_key]
    if not len(matches):
        raise KeyError(f"{image_key!r} has no projection under the current PCA version")
    unit = unit_rows(np.stack(projected["pca"].to_numpy()))  # (n, k)
    similarity = unit @ unit[matches[0]]
    order = [i for i in np.argsort(-similarity, kind="stable") if i != matches[0]][:count]
    shown = [column for column in ("image_key", "etag", "label", "batch_id") if column in projected]
    return projected.iloc[order][shown].assign(similarity=similarity[order])


def fetch_photos(data: Store, reports: list[dict], rows: pd.DataFrame, images: str | None = None) -> list[bytes | str]:
    """The bytes of each row's photo (image_key, batch_id, etag), or why not.

    From `images` when given (a local folder laid out as `<Label>/<name>`, as passed to `verger demo
    --images`), else from the batch's source; a local warehouse never reads photos from S3 (the
    demo's bucket lived in its embedded S3 and is gone)."""
    sources = {r["batch_id"]: r["source"] for r in reports}
    found: list[bytes | str] = []
    for _, row in rows.iterrows():
        source, key = sources.get(row["batch_id"]), row["image_key"]
        if images:
            source, key = f"file://{os.path.abspath(images)}", key.removeprefix(layout.RAW_PREFIX)
        if source is None:
            found.append(f"no report for batch {row['batch_id']}")
            continue
        if store.is_local(data.warehouse) and not store.is_local(source):
            found.append(f"{source} is not reachable from a local warehouse: set VERGER_IMAGES to the photos' folder")
            continue
        (fetched,) = fetch_all(source, [key], [row["etag"]])
        content = fetched.content
        found.append(content if isinstance(content, bytes) else f"{content.reason}: {content.detail}")
    return found


def suggestions(data: Store) -> pd.DataFrame:
    """The latest suggestion per inbox photo: its top labels and scores, flag, and nearest images."""
    rows = data.read(layout.SUGGESTIONS_TABLE, ("image_key", "etag", "batch_id", "labels", "scores", "uncertain",
                                                 "neighbour_keys", "created_at"))
    return latest_rows(rows, "created_at")


def plot_photos(photos_: list[bytes | str], titles: list[str], columns: int = 5, title: str = "",
                highlight: int | None = None):
    """A grid of photos with a caption each (photo `highlight` framed in red); a photo that could
    not be read shows why instead."""
    rows = -(-len(photos_) // columns)
    figure, grid = report.plt.subplots(rows, columns, figsize=(2.4 * columns, 2.9 * rows), squeeze=False)
    for axes in grid.ravel():
        axes.set_axis_off()
    for index, (axes, content, caption) in enumerate(zip(grid.ravel(), photos_, titles)):
        if isinstance(content, bytes):
            axes.imshow(Image.open(io.BytesIO(content)).convert("RGB"))
        else:
            axes.text(0.5, 0.5, content, ha="center", va="center", wrap=True, fontsize=8, color="tab:red")
        if index == highlight:
            axes.set_axis_on()
            axes.set(xticks=[], yticks=[])
            for spine in axes.spines.values():
                spine.set(color="tab:red", linewidth=3)
        axes.set_title(caption, fontsize=8, pad=4)
    figure.suptitle(title)
    figure.tight_layout(h_pad=1.5)
    return figure


def saved_queries() -> dict[str, dict]:
    """The stack's saved Athena queries (name → Description, QueryString), read from template.yaml."""
    resources = load_template()["Resources"]
    return {r["Properties"]["Name"]: r["Properties"] for r in resources.values() if r["Type"] == "AWS::Athena::NamedQuery"}


def sql_connection(data: Store, reports: list[dict]) -> duckdb.DuckDBPyConnection:
    """DuckDB over the store's tables (without the vectors) and the batch reports, under the names
    Athena sees in Glue, so the saved queries run unchanged on a local warehouse."""
    connection = duckdb.connect()
    for name, table in data.tables.items():
        if table is not None:
            columns = tuple(f.name for f in table.schema().fields if f.name not in VECTOR_COLUMNS)
            connection.register(name, table.scan(selected_fields=columns).to_arrow())
    if reports:
        connection.register(BATCH_REPORTS_TABLE, pa.Table.from_pylist(reports))
    return connection
