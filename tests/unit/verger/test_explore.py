"""The exploration helpers and the committed notebook, without Spark or a real store."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from verger import explore

NOTEBOOK = Path(__file__).resolve().parents[3] / "notebooks" / "explore.ipynb"


def test_committed_notebook_has_no_outputs_or_execution_counts():
    # GIVEN the notebook as committed  THEN it carries code and text only (outputs are stripped)
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code
    assert all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)


def test_opening_a_folder_that_is_no_warehouse_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Verger warehouse at .*catalog.db"):
        explore.open_store(str(tmp_path))


def test_latest_row_per_image_wins_over_an_older_upload():
    rows = pd.DataFrame({"image_key": ["a", "a", "b"], "etag": ["old", "new", "x"],
                         "ingested_at": ["2026-01-01", "2026-02-01", "2026-01-01"], "batch_id": ["1", "2", "1"]})
    # THEN the re-upload (later ingestion) is the current row of a, and b keeps its only row
    assert explore.latest_rows(rows).set_index("image_key")["etag"].to_dict() == {"a": "new", "b": "x"}


def test_nearest_ranks_by_cosine_in_pca_space_and_leaves_the_photo_out():
    points = pd.DataFrame({"image_key": ["q", "same-direction", "orthogonal", "opposite"],
                           "etag": list("abcd"), "label": ["A", "A", "B", "C"], "batch_id": ["1"] * 4,
                           "pca": [np.array([1.0, 0.0]), np.array([5.0, 0.1]), np.array([0.0, 2.0]), np.array([-1.0, 0.0])]})
    found = explore.nearest(points, "q", count=3)
    assert found["image_key"].tolist() == ["same-direction", "orthogonal", "opposite"]
    assert found["similarity"].round(3).tolist() == [1.0, 0.0, -1.0]
    with pytest.raises(KeyError, match="no projection"):
        explore.nearest(points, "unknown")


# ---------------------------------------------------------------- the saved Athena queries
def store_tables() -> dict[str, pa.Table]:
    """A store with one re-upload, a retried quarantine, a waiting inbox photo and a suggested one."""
    features = pa.Table.from_pylist([
        {"image_key": "raw/Kiwi/1.jpg", "label": "Kiwi", "etag": "k1", "batch_id": "b1", "ingested_at": "2026-01-01T10"},
        {"image_key": "raw/Kiwi/1.jpg", "label": "Kiwi", "etag": "k1b", "batch_id": "b2", "ingested_at": "2026-01-02T10"},
        {"image_key": "raw/Kiwi/2.jpg", "label": "Kiwi", "etag": "k2", "batch_id": "b2", "ingested_at": "2026-01-02T10"},
        {"image_key": "raw/Lemon/1.jpg", "label": "Lemon", "etag": "l1", "batch_id": "b2", "ingested_at": "2026-01-02T10"},
        {"image_key": "inbox/x.jpg", "label": None, "etag": "x1", "batch_id": "b1", "ingested_at": "2026-01-01T10"},
        {"image_key": "inbox/y.jpg", "label": None, "etag": "y1", "batch_id": "b2", "ingested_at": "2026-01-02T10"},
    ])
    quarantine = pa.Table.from_pylist([
        {"image_key": "raw/Kiwi/2.jpg", "etag": "k2", "batch_id": "b1", "ingested_at": "2026-01-01T10",
         "reason": "fetch_failed", "detail": "timeout"},  # stored by the next run: not counted
        {"image_key": "raw/Kiwi/3.jpg", "etag": "k3", "batch_id": "b1", "ingested_at": "2026-01-01T10",
         "reason": "not_an_image", "detail": "text"},
        {"image_key": "raw/Kiwi/4.jpg", "etag": "k4", "batch_id": "b2", "ingested_at": "2026-01-02T10",
         "reason": "not_an_image", "detail": "html"},
    ])
    suggestions = pa.Table.from_pylist([{"image_key": "inbox/y.jpg", "etag": "y1", "batch_id": "b2"}])
    return {"features": features, "quarantine": quarantine, "suggestions": suggestions}


@pytest.fixture
def sql():
    connection = duckdb.connect()
    for name, table in store_tables().items():
        connection.register(name, table)
    return connection, {name: query["QueryString"] for name, query in explore.saved_queries().items()}


def test_batch_reports_leave_out_the_scheduled_upkeep_runs_reports(tmp_path):
    # GIVEN two batch reports and the report of an upkeep run in the warehouse's reports folder
    folder = tmp_path / "reports"
    folder.mkdir()
    for name, body in {"incr-2": {"batch_id": "incr-2", "mode": "incremental", "ingested_at": "2"},
                       "main-1": {"batch_id": "main-1", "mode": "maintain", "tables": {}},
                       "incr-1": {"batch_id": "incr-1", "mode": "incremental", "ingested_at": "1"}}.items():
        (folder / f"{name}.json").write_text(json.dumps(body))
    # WHEN the notebook lists the batches
    reports = explore.batch_reports(explore.Store(str(tmp_path), {}))
    # THEN only the batches are listed, oldest first
    assert [report["batch_id"] for report in reports] == ["incr-1", "incr-2"]


def test_photos_per_label_counts_a_reuploaded_photo_once(sql):
    connection, queries = sql
    assert connection.sql(queries["photos-per-label"]).fetchall() == [("(inbox)", 2), ("Kiwi", 2), ("Lemon", 1)]


def test_quarantine_reasons_leave_out_uploads_a_later_run_stored(sql):
    connection, queries = sql
    rows = connection.sql(queries["quarantine-reasons"]).fetchall()
    # THEN the retried fetch failure is gone; the two unreadable files count, the latest as example
    assert [(reason, photos, example) for reason, photos, _, example in rows] == [
        ("not_an_image", 2, "raw/Kiwi/4.jpg: html")]


def test_waiting_for_a_suggestion_lists_inbox_photos_without_one(sql):
    connection, queries = sql
    rows = connection.sql(queries["photos-waiting-for-a-suggestion"]).fetchall()
    assert [row[0] for row in rows] == ["inbox/x.jpg"]


def test_latest_batches_come_newest_first_with_their_throughput(sql):
    connection, queries = sql
    reports = [{"batch_id": f"b{i}", "mode": "incremental", "ingested_at": f"2026-01-0{i}T10",
                "images": {"in_manifest": 10 * i, "already_present": 0, "new": 10 * i, "quarantined": 0},
                "seconds": {"total": 5.0}, "images_per_second": 2.0 * i,
                "pca": {"action": "applied", "drift": {"captured_variance_share": 0.9, "refit_advised": False}}}
               for i in (1, 2, 3)]
    connection.register("batch_reports", pa.Table.from_pylist(reports))
    rows = connection.sql(queries["latest-batches"]).df()
    assert rows["batch_id"].tolist() == ["b3", "b2", "b1"]
    assert rows["images_per_second"].tolist() == [6.0, 4.0, 2.0]
    assert rows["new_photos"].tolist() == [30, 20, 10]


def test_photos_come_from_the_images_folder_and_never_from_s3_for_a_local_warehouse(tmp_path):
    (tmp_path / "Kiwi").mkdir()
    (tmp_path / "Kiwi" / "1.jpg").write_bytes(b"kiwi bytes")
    data = explore.Store(str(tmp_path / "warehouse"), {})
    reports = [{"batch_id": "b1", "source": "s3://verger-demo"}]
    rows = pd.DataFrame({"image_key": ["raw/Kiwi/1.jpg"], "etag": ["e"], "batch_id": ["b1"]})
    # GIVEN a local warehouse whose batches came from the demo's embedded S3
    # WHEN photos are fetched with the folder the demo uploaded from  THEN they are read there
    assert explore.fetch_photos(data, reports, rows, images=str(tmp_path)) == [b"kiwi bytes"]
    # AND without it, S3 is not called: the reason says what to set
    (reason,) = explore.fetch_photos(data, reports, rows)
    assert "not reachable from a local warehouse" in reason and "VERGER_IMAGES" in reason
