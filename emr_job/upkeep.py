"""`verger maintain`: compact small files, expire old snapshots, delete files no snapshot references.

Every batch adds a few small Parquet files and snapshots per table. Upkeep bounds both, and it is
what finishes an erasure: a deleted photo's rows leave the current snapshot at once, but the files
that held them stay readable through older snapshots until those expire (`retention`) and the
files, then unreferenced, are deleted here. Plain pyiceberg and pyarrow (no Spark), so the same
code runs on a local warehouse and on S3 with the Glue catalog.
"""
from __future__ import annotations

import itertools
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pyarrow import fs

from contract import layout
from contract.manifest import RETENTION_DAYS, Manifest
from emr_job import blobs, store

TABLES = (layout.FEATURES_TABLE, layout.PROJECTIONS_TABLE, layout.QUARANTINE_TABLE, layout.SUGGESTIONS_TABLE)
DEFAULT_RETENTION = timedelta(days=7)
# A file younger than this may belong to a commit in flight (written, not yet registered).
DEFAULT_ORPHAN_AGE = timedelta(days=1)
TARGET_FILE_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True)
class Upkeep:
    retention: timedelta = DEFAULT_RETENTION
    orphan_age: timedelta = DEFAULT_ORPHAN_AGE
    target_file_bytes: int = TARGET_FILE_BYTES


def maintain(catalog, warehouse: str, upkeep: Upkeep = Upkeep()) -> dict:
    """Upkeep of every table; returns per table the files and snapshots before and after."""
    now = datetime.now(timezone.utc)
    report = {}
    for name in TABLES:
        table = store.load_table(catalog, name)
        if table is None:
            continue
        before = table_shape(table)
        compacted = compact(table, upkeep.target_file_bytes)
        table = store.load_table(catalog, name)
        expired = expire_snapshots(table, now - upkeep.retention)
        table = store.load_table(catalog, name)
        removed = remove_orphans(table, data_roots(warehouse, table, name), now - upkeep.orphan_age)
        report[name] = {"before": before, "after": table_shape(store.load_table(catalog, name)),
                        "compacted": compacted, "snapshots_expired": expired, "files_deleted": removed}
    return report


def run_maintenance(manifest: Manifest, warehouse: str) -> dict:
    """A `maintain` manifest's run (the scheduled upkeep on AWS): every table kept up with the
    manifest's retention, the report written where a batch's goes, so a run that ended is not
    relaunched by the reconciliation and one that did not is."""
    started, started_at = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="microseconds")
    retention_days = manifest.extra[RETENTION_DAYS]
    tables = maintain(store.open_catalog(warehouse), warehouse, Upkeep(retention=timedelta(days=retention_days)))
    report = {"batch_id": manifest.batch_id, "mode": manifest.mode, "ingested_at": started_at,
              "retention_days": retention_days,
              "tables": tables, "seconds": {"total": round(time.perf_counter() - started, 3)}, "status": "complete"}
    blobs.write_bytes(store.report_uri(warehouse, manifest.batch_id), json.dumps(report, indent=1).encode())
    return report


def table_shape(table) -> dict:
    return {"data_files": len(table.scan().plan_files()), "snapshots": len(table.snapshots()),
            "rows": store.row_count(table)}


def compact(table, target_bytes: int) -> dict:
    """Rewrite the small files into few, sorted by image_key, in one commit that fails (and is
    skipped until the next run) if anything else committed meanwhile: a concurrent erasure must
    never be undone by rewriting the rows it removed."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files

    small = [task for task in table.scan().plan_files() if task.file.file_size_in_bytes < target_bytes // 2]
    if len(small) < 2:
        return {"files_rewritten": 0, "files_written": 0}
    groups = bins(small, target_bytes)
    metadata, written, rewritten = table.metadata, 0, 0
    commit_uuid, counter = uuid.uuid4(), itertools.count(0)
    try:
        with table.transaction() as transaction:
            with transaction.update_snapshot(
                snapshot_properties={"verger.batch-id": "maintain"}
            ).overwrite(commit_uuid) as rewrite:
                for group in groups:
                    rows = ArrowScan(table_metadata=metadata, io=table.io, projected_schema=metadata.schema(),
                                     row_filter=AlwaysTrue()).to_table(tasks=group)
                    for data_file in _dataframe_to_data_files(metadata, rows.sort_by("image_key"), table.io,
                                                              commit_uuid, counter):
                        rewrite.append_data_file(data_file)
                        written += 1
                    for task in group:
                        rewrite.delete_data_file(task.file)
                        rewritten += 1
    except CommitFailedException as error:
        return {"files_rewritten": 0, "files_written": 0, "skipped": f"concurrent commit: {error}"}
    return {"files_rewritten": rewritten, "files_written": written}


def bins(tasks: list, target_bytes: int) -> list[list]:
    """Files in key order, cut into groups of about `target_bytes` (groups of one are left alone).

    Examples
    --------
    >>> from types import SimpleNamespace as N
    >>> task = lambda low, size: N(file=N(file_size_in_bytes=size, lower_bounds={}, file_path=low))
    >>> [[t.file.file_path for t in g] for g in bins([task("b", 6), task("a", 6), task("c", 6)], 12)]
    [['a', 'b']]
    """
    ordered = sorted(tasks, key=lambda task: (task.file.lower_bounds or {}).get(1, b"") + task.file.file_path.encode())
    groups, current, size = [], [], 0
    for task in ordered:
        if current and size + task.file.file_size_in_bytes > target_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(task)
        size += task.file.file_size_in_bytes
    groups.append(current)
    return [group for group in groups if len(group) > 1]


def expire_snapshots(table, older_than: datetime) -> int:
    """Drop snapshots older than `older_than` (never the current one); returns how many."""
    before = len(table.snapshots())
    table.maintenance.expire_snapshots().older_than(older_than).commit()
    return before - len(table.refresh().snapshots())


def referenced_files(table) -> set[str]:
    """Every data file that some remaining snapshot still reads."""
    paths = table.inspect.all_data_files().column("file_path").to_pylist()
    return {normalise(path) for path in paths}


def data_roots(warehouse: str, table, name: str) -> list[str]:
    """Where this table's data files are written: the job's attempt directories and pyiceberg's
    own data directory (files rewritten by deletes and compaction)."""
    return [layout.warehouse_path(store.warehouse_root(warehouse), name, layout.DATA_DIR),
            layout.warehouse_path(table.location(), "data")]


def remove_orphans(table, roots: list[str], older_than: datetime) -> int:
    """Delete files under `roots` that no snapshot references and that are older than `older_than`
    (a younger file may be a commit in flight); returns how many."""
    keep = referenced_files(table)
    removed = 0
    for root in roots:
        filesystem, base = fs.FileSystem.from_uri(store.iceberg_path(root) if store.is_local(root) else root)
        selector = fs.FileSelector(base, recursive=True, allow_not_found=True)
        for info in filesystem.get_file_info(selector):
            if info.type != fs.FileType.File or not info.path.endswith(".parquet"):
                continue
            uri = _uri(root, info.path)
            if normalise(uri) in keep or info.mtime is None or info.mtime >= older_than:
                continue
            filesystem.delete_file(info.path)
            removed += 1
    return removed


def normalise(path: str) -> str:
    """One spelling per file: `file:/x`, `file:///x` and `/x` are the same local file."""
    if path.startswith("file:") or path.startswith("/"):
        return store.iceberg_path(path if path.startswith("file:") else f"file://{path}")
    return path


def _uri(root: str, path: str) -> str:
    """pyarrow lists paths without a scheme; put back the root's."""
    return f"file://{path}" if store.is_local(root) else f"{root.split('://', 1)[0]}://{path}"
