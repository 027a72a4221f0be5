"""Parquet files the driver writes for a small batch, with the columns Spark writes.

Names, order and types are Spark's; whether a column may be null is the table's own (Spark marks a
column it filled with a literal, such as batch_id, as required, and the commit checks that).
"""
from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from emr_job import blobs, store

_TEXT, _FLOATS, _TEXTS = pa.string(), pa.list_(pa.float32()), pa.list_(pa.string())
FEATURE_COLUMNS = pa.schema([("image_key", _TEXT), ("label", _TEXT), ("etag", _TEXT), ("batch_id", _TEXT),
                             ("ingested_at", _TEXT), ("features", _FLOATS)])
QUARANTINE_COLUMNS = pa.schema([("image_key", _TEXT), ("label", _TEXT), ("etag", _TEXT), ("batch_id", _TEXT),
                                ("ingested_at", _TEXT), ("reason", _TEXT), ("detail", _TEXT)])
PROJECTION_COLUMNS = pa.schema([("image_key", _TEXT), ("etag", _TEXT), ("pca_version", _TEXT), ("pca", _FLOATS),
                                ("batch_id", _TEXT)])
SUGGESTION_COLUMNS = pa.schema([
    ("image_key", _TEXT), ("etag", _TEXT), ("batch_id", _TEXT), ("pca_version", _TEXT), ("method", _TEXT),
    ("labels", _TEXTS), ("scores", _FLOATS), ("uncertain", pa.bool_()), ("neighbour_keys", _TEXTS),
    ("neighbour_labels", _TEXTS), ("neighbour_similarities", _FLOATS), ("created_at", _TEXT),
])


def write_rows(frame: pd.DataFrame, columns: pa.Schema, catalog, warehouse: str, table: str, batch_id: str
               ) -> list[str]:
    """Write the rows, sorted by image_key as Spark's writer sorts them, as one file in a fresh
    attempt directory; return its path as the commit wants it (none for no rows)."""
    if frame.empty:
        return []
    columns = with_table_nullability(columns, store.load_table(catalog, table))
    rows = pa.Table.from_pandas(frame.sort_values("image_key")[columns.names], schema=columns, preserve_index=False)
    rows = rows.replace_schema_metadata(None)
    sink = io.BytesIO()
    pq.write_table(rows, sink)
    path = f"{store.attempt_dir(warehouse, table, batch_id)}/part-00000-driver.parquet"
    blobs.write_bytes(path, sink.getvalue())
    return [f"file://{path}" if store.is_local(warehouse) else path]


def with_table_nullability(columns: pa.Schema, table) -> pa.Schema:
    """`columns`, each nullable as the table has it (as given before the table's first commit)."""
    if table is None:
        return columns
    required = {field.name for field in table.schema().fields if field.required}
    return pa.schema([field.with_nullable(field.name not in required) for field in columns])
