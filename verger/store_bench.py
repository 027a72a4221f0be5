"""`verger bench-store`: does a batch cost the same in a big store as in a small one?

Two warehouses get the same 200 real photos (so both have a PCA); the big one then grows to
`--rows` rows of synthetic features and projections (real-looking keys and etags, written with
pyarrow and registered with `add_files`, as a batch's files are). The same 100 new real photos then
go into each, one child process per run, side by side in this run. Printed: seconds (the job's
own total, JVM start excluded), the driver's peak memory (the Python driver's max RSS), what the
batch's key-filtered scans plan to read, and each table's files and snapshots before and after
`maintain`.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from bisect import bisect_right
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contract import layout
from emr_job import store
from emr_job.folders import list_image_keys, sample
from emr_job.upkeep import Upkeep, maintain
from verger.bench import link_images

BASE_IMAGES = 200
NEW_IMAGES = 100
ROWS_PER_FILE = 50_000
PAPER_ROWS = 10_000_000  # the next order of magnitude, estimated from this run's layout and reads


def bench_store(images: str, weights: str, rows: int, workdir: str) -> Iterator[str]:
    keys = sample(list_image_keys(images), BASE_IMAGES + NEW_IMAGES)
    base, new = keys[::3] + keys[1::3], keys[2::3]
    work = Path(workdir)
    for name, chosen in (("base", base), ("new", new)):
        link_images(images, chosen, work / name)  # hard links: a local source refuses links leading outside it
    folders = {name: str(work / name) for name in ("base", "new")}
    stores = {"small": str(work / "small"), "big": str(work / "big")}
    for name, warehouse in stores.items():
        child_run(folders["base"], warehouse, weights)
        yield f"{name} store: {len(base)} real photos stored"
    began = time.perf_counter()
    grow(stores["big"], rows, sorted({key.split("/")[0] for key in list_image_keys(images)}))
    yield f"big store: grown by {rows:,} synthetic rows in {time.perf_counter() - began:.1f} s"

    results, labels = {}, sorted({key.split("/")[0] for key in list_image_keys(images)})
    for name, warehouse in stores.items():
        reads = planned_reads(warehouse, new)
        report, peak = child_run(folders["new"], warehouse, weights)
        results[name] = (report["seconds"]["total"], peak)
        yield (f"{name} store ({store.row_count(features_table(warehouse)):,} rows after): 100 new photos in "
               f"{report['seconds']['total']:.1f} s, driver peak {peak / 2**20:.0f} MiB, new={report['images']['new']}")
        for table, read in reads.items():
            yield (f"  {table}: the batch's keys plan {read.planned} of {read.total} files, "
                   f"{read.column_bytes / 2**20:.1f} MiB of columns")
    (small_s, small_peak), (big_s, big_peak) = results["small"], results["big"]
    yield f"time ratio big/small: {big_s / small_s:.2f}; driver peak ratio: {big_peak / small_peak:.2f}"
    if PAPER_ROWS > rows:
        yield from on_paper(reads, labels, rows, new)

    expire_all = Upkeep(retention=timedelta(0), orphan_age=timedelta(0))  # the bench's files are not in flight
    for table, outcome in maintain(store.open_catalog(stores["big"]), stores["big"], expire_all).items():
        yield (f"maintain {table}: files {outcome['before']['data_files']} -> {outcome['after']['data_files']}, "
               f"snapshots {outcome['before']['snapshots']} -> {outcome['after']['snapshots']}, "
               f"files deleted {outcome['files_deleted']}")


def child_run(images: str, warehouse: str, weights: str) -> tuple[dict, int]:
    """`verger run` in a child; its report and the driver Python's peak RSS (bytes)."""
    script = (
        "import contextlib, io, json, resource, sys\n"
        "from verger.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    code = main(['run', '--images', {images!r}, '--warehouse', {warehouse!r}, '--weights', {weights!r}])\n"
        "print(json.dumps({'report': json.loads(out.getvalue()), "
        "'maxrss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"verger run failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["report"], result["maxrss"]


def features_table(warehouse: str):
    return store.load_table(store.open_catalog(warehouse), layout.FEATURES_TABLE)


def grow(warehouse: str, rows: int, labels: list[str]) -> None:
    """Add `rows` synthetic features and projections under the real label folders (sorted by key,
    one commit per table), so the new photos' keys fall among them as they would in a real store."""
    catalog = store.open_catalog(warehouse)
    features = store.load_table(catalog, layout.FEATURES_TABLE)
    projections = store.load_table(catalog, layout.PROJECTIONS_TABLE)
    version = projections.properties[layout.CURRENT_PCA_PROPERTY]
    k = len(store.read_columns(projections, ["pca"]).column("pca")[0])
    schemas = {name: store.file_schema(store.data_files(table)[0]) for name, table in
               ((layout.FEATURES_TABLE, features), (layout.PROJECTIONS_TABLE, projections))}
    rng = np.random.default_rng(0)
    vectors = rng.random((ROWS_PER_FILE, layout.FEATURE_DIM), np.float32)  # reused per file: same bytes, other keys
    coordinates = rng.standard_normal((ROWS_PER_FILE, k)).astype(np.float32)
    keys = sorted(synthetic_keys(labels, rows))
    written: dict[str, list[str]] = {layout.FEATURES_TABLE: [], layout.PROJECTIONS_TABLE: []}
    for start in range(0, rows, ROWS_PER_FILE):
        chunk = keys[start:start + ROWS_PER_FILE]
        etags = [hashlib.md5(key.encode(), usedforsecurity=False).hexdigest() for key in chunk]
        n = len(chunk)
        columns = {
            layout.FEATURES_TABLE: {"image_key": chunk, "label": [key.split("/")[0] for key in chunk], "etag": etags,
                                    "batch_id": ["synthetic"] * n, "ingested_at": ["2026-01-01T00:00:00"] * n,
                                    "features": list_column(vectors[:n])},
            layout.PROJECTIONS_TABLE: {"image_key": chunk, "etag": etags, "pca_version": [version] * n,
                                       "pca": list_column(coordinates[:n]), "batch_id": ["synthetic"] * n},
        }
        for name, values in columns.items():
            path = store.attempt_dir(warehouse, name, "synthetic") + "/part-0.parquet"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            schema = schemas[name]
            pq.write_table(pa.table({field.name: pa.array(values[field.name], field.type) if field.name not in
                                     ("features", "pca") else values[field.name].cast(field.type)
                                     for field in schema}, schema=schema), path)
            written[name].append(f"file://{path}")
    for name, files in written.items():
        store.commit_files(catalog, name, files, "synthetic")


def list_column(matrix: np.ndarray) -> pa.Array:
    n, d = matrix.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)), pa.array(matrix.ravel()))


def synthetic_keys(labels: list[str], rows: int) -> list[str]:
    """Keys spread over the label folders, e.g. 'Kiwi/synthetic-0000123.jpg'.

    Examples
    --------
    >>> synthetic_keys(["A", "B"], 3)
    ['A/synthetic-0000000.jpg', 'B/synthetic-0000001.jpg', 'A/synthetic-0000002.jpg']
    """
    return [f"{labels[index % len(labels)]}/synthetic-{index:07d}.jpg" for index in range(rows)]


@dataclass(frozen=True)
class PlannedRead:
    """What a scan filtered by the batch's keys plans in one table."""

    planned: int  # files
    total: int  # live files
    column_bytes: int  # compressed bytes of the short columns the batch checks, in the planned files
    synthetic_planned: int  # of the planned files, those `grow` wrote
    synthetic_bytes: int
    synthetic_total: int


def planned_reads(warehouse: str, keys: list[str]) -> dict[str, PlannedRead]:
    """Per table: files a scan filtered by `keys` plans, all live files, and the compressed bytes of
    the short columns the batch checks read in the planned files (never the feature vectors)."""
    catalog = store.open_catalog(warehouse)
    reads = {}
    for name in (layout.FEATURES_TABLE, layout.PROJECTIONS_TABLE, layout.QUARANTINE_TABLE):
        table = store.load_table(catalog, name)
        if table is None:
            continue
        planned = {path: checked_column_bytes(path) for path in store.data_files(table, store.keys_filter(keys))}
        synthetic = {path: size for path, size in planned.items() if is_synthetic(path)}
        every = store.data_files(table)
        reads[name] = PlannedRead(len(planned), len(every), sum(planned.values()), len(synthetic),
                                  sum(synthetic.values()), sum(map(is_synthetic, every)))
    return reads


def is_synthetic(path: str) -> bool:
    return "/batch_id=synthetic/" in path


def checked_column_bytes(path: str) -> int:
    checked = {"image_key", "etag", "label", "batch_id", "ingested_at", "pca_version", "reason"}
    metadata = pq.ParquetFile(path.removeprefix("file://")).metadata
    return sum(metadata.row_group(group).column(column).total_compressed_size
               for group in range(metadata.num_row_groups) for column in range(metadata.num_columns)
               if metadata.row_group(group).column(column).path_in_schema in checked)


def on_paper(reads: dict[str, PlannedRead], labels: list[str], rows: int, keys: list[str]) -> Iterator[str]:
    """The big store's reads at PAPER_ROWS, estimated: the real photos' files as measured; the
    synthetic files laid out as `grow` would write them (their key bounds computed, not written),
    each planned one costing what a planned synthetic file cost here. The same model applied to
    this run's size is printed beside what was measured, as its check."""
    here, there = synthetic_bounds(labels, rows), synthetic_bounds(labels, PAPER_ROWS)
    for table, read in reads.items():
        if not read.synthetic_total:
            continue
        per_file = read.synthetic_bytes / max(read.synthetic_planned, 1)
        per_row = per_file / ROWS_PER_FILE
        planned = files_holding(there, keys)
        real_bytes = read.column_bytes - read.synthetic_bytes
        yield (f"  {table} on paper at {PAPER_ROWS:,} rows (estimate): the batch's keys plan ~{planned + read.planned - read.synthetic_planned} "
               f"of {len(there) + read.total - read.synthetic_total} files, ~{(real_bytes + planned * per_file) / 2**20:.0f} MiB of columns "
               f"(model at {rows:,}: {files_holding(here, keys)} synthetic files planned, measured {read.synthetic_planned}); "
               f"with files spanning every label instead (batch files compacted without a global sort) all files, "
               f"~{(real_bytes + PAPER_ROWS * per_row) / 2**20:.0f} MiB")


def synthetic_bounds(labels: list[str], rows: int, rows_per_file: int = ROWS_PER_FILE) -> list[tuple[str, str]]:
    """(first, last) key of each file `grow` writes for `rows` rows, without building the keys.

    Sorted, the keys group by label ("<label>/" order) and, within a label, by index.

    Examples
    --------
    >>> keys = sorted(synthetic_keys(["B", "A B", "A"], 10))
    >>> synthetic_bounds(["B", "A B", "A"], 10, 4) == [(keys[i], keys[min(i + 3, 9)]) for i in (0, 4, 8)]
    True
    """
    count = len(labels)
    order = sorted(range(count), key=lambda index: labels[index] + "/")
    sizes = [len(range(index, rows, count)) for index in order]
    starts = [sum(sizes[:group]) for group in range(count)]

    def key_at(position: int) -> str:
        group = bisect_right(starts, position) - 1
        index = order[group] + count * (position - starts[group])
        return f"{labels[order[group]]}/synthetic-{index:07d}.jpg"

    return [(key_at(start), key_at(min(start + rows_per_file, rows) - 1)) for start in range(0, rows, rows_per_file)]


def files_holding(bounds: list[tuple[str, str]], keys: list[str]) -> int:
    """Files whose key bounds may hold one of `keys`: what the Iceberg scan plans.

    Examples
    --------
    >>> files_holding([("a", "c"), ("d", "f"), ("g", "i")], ["b", "e2", "z"])
    2
    """
    return sum(any(low <= key <= high for key in keys) for low, high in bounds)
