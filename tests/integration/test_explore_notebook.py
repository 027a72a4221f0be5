"""notebooks/explore.ipynb, executed against a small store the real job builds: labelled batches,
a batch with broken files (quarantine) and a batch of inbox photos (suggestions)."""
from __future__ import annotations

import os
import shutil
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
                shutil.copyfile(fruits / label / name, root / label / name)  # a link out of the folder is refused
                batches[batch].append(f"{label}/{name}")
        (root / "inbox").mkdir(exist_ok=True)
        for name in names[FIRST + SECOND:FIRST + SECOND + INBOX]:
            key = f"inbox/{label.replace(' ', '_')}-{name}"
            shutil.copyfile(fruits / label / name, root / key)
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


@pytest.fixture(scope="module")
def executed(small_store, monkeypatch_module):
    """The notebook run top to bottom by a fresh kernel (nbclient), as CI and a user would."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch_module.setenv("VERGER_WAREHOUSE", str(small_store))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # WHEN every cell runs; nbclient raises CellExecutionError at the first cell that fails
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return notebook


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def outputs(notebook, kind: str) -> list:
    return [o for cell in notebook.cells for o in cell.get("outputs", []) if kind in o.get("data", {})]


def printed(notebook) -> str:
    return "".join(o["text"] for cell in notebook.cells for o in cell.get("outputs", []) if o["output_type"] == "stream")


def test_notebook_runs_on_a_store_the_job_built_and_shows_every_figure(executed):
    # THEN no cell failed, the summary names what the job stored, and each figure was drawn:
    # labels, batches, variance, map, neighbours (photos), drift, suggestions (photos)
    labelled = len(STORE_LABELS) * (FIRST + SECOND)
    inbox = len(STORE_LABELS) * INBOX
    assert f"{labelled + inbox} photos, {len(STORE_LABELS) + 1} labels (inbox included), 3 batches" in printed(executed)
    assert len(outputs(executed, "image/png")) == 7
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o["output_type"] == "error"]


def test_notebook_fetches_the_neighbours_and_inbox_photos_from_their_source(executed):
    # THEN no photo tile fell back to a reason instead of the image
    assert "missing:" not in printed(executed) and "no report for batch" not in printed(executed)


def test_notebook_runs_every_saved_athena_query_on_the_local_store(executed):
    from verger.explore import saved_queries

    text = printed(executed)
    # THEN each saved query of the stack ran (the quarantine table exists: two files were broken)
    assert all(f"{name}: " in text for name in saved_queries())
    assert "not runnable" not in text


def test_saved_queries_answer_from_what_the_job_stored(small_store):
    from verger import explore

    data = explore.open_store(str(small_store))
    connection = explore.sql_connection(data, explore.batch_reports(data))
    queries = {name: q["QueryString"] for name, q in explore.saved_queries().items()}
    # WHEN the stack's saved queries run on the store (DuckDB, the SQL Athena runs)
    per_label = dict(connection.sql(queries["photos-per-label"]).fetchall())
    batches = connection.sql(queries["latest-batches"]).df()
    reasons = dict((row[0], row[1]) for row in connection.sql(queries["quarantine-reasons"]).fetchall())
    waiting = connection.sql(queries["photos-waiting-for-a-suggestion"]).fetchall()
    # THEN they count what went in: every label, the inbox, the batches newest first, the broken files
    assert per_label == {**{label: FIRST + SECOND for label in STORE_LABELS}, "(inbox)": len(STORE_LABELS) * INBOX}
    assert batches["new_photos"].tolist() == [len(STORE_LABELS) * INBOX, len(STORE_LABELS) * SECOND,
                                              len(STORE_LABELS) * FIRST]
    assert batches["pca_action"].tolist() == ["applied", "applied", "refit"]
    assert (batches["images_per_second"] > 0).all()
    assert reasons == {"not_an_image": 1, "empty": 1}
    # AND every inbox photo got its suggestion, so none waits
    assert waiting == []


def hive_fields(hive_type: str) -> dict[str, str]:
    """The fields of a Hive `struct<name:type,…>` type, nested types kept as text."""
    body, fields, depth, start = hive_type[len("struct<"):-1], {}, 0, 0
    for position, char in enumerate(body + ","):
        depth += char == "<" or char == "("
        depth -= char == ">" or char == ")"
        if char == "," and depth == 0:
            name, _, kind = body[start:position].partition(":")
            fields[name] = kind
            start = position + 1
    return fields


def missing_keys(value: dict, hive_type: str, path: str) -> list[str]:
    """Struct fields the Glue type declares that the JSON object lacks (recursively)."""
    missing = []
    for name, kind in hive_fields(hive_type).items():
        if name not in value:
            missing.append(f"{path}.{name}")
        elif kind.startswith("struct<") and isinstance(value[name], dict):
            missing += missing_keys(value[name], kind, f"{path}.{name}")
    return missing


def test_batch_reports_table_declares_only_fields_the_job_writes(small_store):
    from verger import explore
    from verger.template import load_template

    columns = load_template()["Resources"]["BatchReportsTable"]["Properties"]["TableInput"]["StorageDescriptor"]["Columns"]
    reports = explore.batch_reports(explore.open_store(str(small_store)))
    # THEN every column and struct field Athena reads is in the reports (the inbox batch has
    # suggestions, an applied batch has drift figures), so no renamed key reads silently as null
    for column in columns:
        present = [r for r in reports if column["Name"] in r]
        assert present, column["Name"]
        if column["Type"].startswith("struct<"):
            assert any(not missing_keys(r[column["Name"]], column["Type"], column["Name"]) for r in present), \
                [missing_keys(r[column["Name"]], column["Type"], column["Name"]) for r in present]
