"""The warehouse's tables, committed through Apache Iceberg (pyiceberg).

Spark writes each batch's Parquet files to a fresh attempt directory that no reader looks at; the
batch becomes visible only when pyiceberg registers those files in one catalog commit (`add_files`).
A job killed before that leaves orphan files and no partial batch; a concurrent commit makes
pyiceberg raise `CommitFailedException`, and we reload and retry (a delete filter is evaluated
again against the fresh snapshot). Locally the catalog is a SQLite file in the warehouse; on AWS it
comes from pyiceberg's own configuration (Glue, set in the template's spark-env), so the step
arguments stay the same everywhere.

Files are written sorted by image_key and the tables keep full-length image_key bounds in their
manifests, so a scan filtered by a batch's keys skips the files that cannot hold them.
"""
from __future__ import annotations

import os
import time
import uuid
import warnings
from typing import Callable, Iterable
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from contract import layout
from emr_job.blobs import local_path

COMMIT_ATTEMPTS = 5
ROWS_PER_FILE = 20_000  # about 100 MB of features
# Set when a table is created: exact image_key bounds (the default truncates strings to 16
# characters, which would make every "raw/<Label>/…" file match a key filter), and old metadata
# files deleted as commits go (they name no features, but they should not pile up either).
TABLE_PROPERTIES = {
    "write.metadata.metrics.column.image_key": "full",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
}


def is_local(warehouse: str) -> bool:
    return urlparse(warehouse).scheme in ("", "file")


def warehouse_root(warehouse: str) -> str:
    """Absolute local directory, or the URI unchanged for object stores."""
    if is_local(warehouse):
        return os.path.abspath(local_path(warehouse))
    return warehouse.rstrip("/")


def open_catalog(warehouse: str, create_namespace: bool = True):
    """The warehouse's catalog; readers pass `create_namespace=False` (it needs write rights on Glue)."""
    from pyiceberg.catalog import load_catalog
    from pyiceberg.catalog.sql import SqlCatalog

    root = warehouse_root(warehouse)
    if is_local(warehouse):
        os.makedirs(root, exist_ok=True)
        catalog = SqlCatalog(
            layout.CATALOG_NAME,
            uri=f"sqlite:///{os.path.join(root, layout.LOCAL_CATALOG_FILE)}",
            warehouse=f"file://{root}",
        )
    else:
        from pyiceberg.utils.config import Config

        # pyiceberg reads PYICEBERG_CATALOG__* once, at import; read them as they are now.
        current = Config().get_catalog_config(layout.CATALOG_NAME) or {}
        catalog = load_catalog(layout.CATALOG_NAME, **{**current, "warehouse": root})
    if create_namespace:
        catalog.create_namespace_if_not_exists(layout.NAMESPACE)
    return catalog


def table_id(name: str) -> str:
    return f"{layout.NAMESPACE}.{name}"


def load_table(catalog, name: str):
    """The table, or None before its first commit."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        return catalog.load_table(table_id(name))
    except NoSuchTableError:
        return None


def report_uri(warehouse: str, batch_id: str) -> str:
    """Where a run's report goes; its presence tells the reconciliation the batch is done."""
    return layout.warehouse_path(warehouse_root(warehouse), layout.REPORTS_DIR, f"{batch_id}.json")


def attempt_dir(warehouse: str, table: str, batch_id: str) -> str:
    """A directory no other attempt writes to, so a retry never overwrites committed files."""
    return layout.warehouse_path(
        warehouse_root(warehouse), table, layout.DATA_DIR, f"batch_id={batch_id}", uuid.uuid4().hex
    )


def write_rows(frame, rows: int, warehouse: str, table: str, batch_id: str) -> list[str]:
    """Write a Spark DataFrame to a fresh attempt directory; return the files written (none for no rows).

    One file per `ROWS_PER_FILE` rows, each holding one range of keys, sorted: a batch adds few
    files, and a later scan for some keys skips the files whose range cannot hold them. (The
    range partitioning of several files samples `frame` first, one more Spark job: callers pass a
    persisted or cheap frame. One file needs no ranges, so a small batch writes in one job.)
    """
    if rows == 0:
        return []
    directory = attempt_dir(warehouse, table, batch_id)
    files = max(1, -(-rows // ROWS_PER_FILE))
    ranged = frame.coalesce(1) if files == 1 else frame.repartitionByRange(files, "image_key")
    ranged.sortWithinPartitions("image_key").write.parquet(directory)
    return written_parquet_files(frame.sparkSession, directory)


def written_parquet_files(spark, directory: str) -> list[str]:
    """The Parquet files in `directory`, listed through the filesystem Spark wrote with (one
    listing call; reading the directory back as a table would also open every file's footer)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(directory)
    filesystem = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return sorted(str(status.getPath().toString()) for status in filesystem.listStatus(path)
                  if status.getPath().getName().endswith(".parquet"))


def iceberg_path(spark_path: str) -> str:
    """Hadoop prints local files as `file:/x`; pyiceberg wants `file:///x`."""
    if spark_path.startswith("file:/") and not spark_path.startswith("file:///"):
        return "file:///" + spark_path[len("file:/"):].lstrip("/")
    return spark_path


def data_files(table, row_filter=None) -> list[str]:
    """Paths of the table's live data files, for `spark.read.parquet`; with `row_filter`, only the
    files whose column bounds say they may hold a matching row (the manifests are read, not the data)."""
    from pyiceberg.expressions import AlwaysTrue

    if table is None:
        return []
    return [task.file.file_path for task in table.scan(row_filter=row_filter or AlwaysTrue()).plan_files()]


# pyiceberg stops using column bounds for an `In` of more than 200 values (every file "might
# match"): a batch's keys go in as an `Or` of `In`s of at most this many, each pruned on its own.
KEYS_PER_IN = 200


def keys_filter(keys: Iterable[str]):
    """Rows of these image keys, as an Iceberg expression (AlwaysFalse for none) that keeps pruning
    files by key bounds however many keys a batch has."""
    from pyiceberg.expressions import AlwaysFalse, In

    keys = sorted(set(keys))
    if not keys:
        return AlwaysFalse()
    return any_of([In("image_key", keys[start:start + KEYS_PER_IN]) for start in range(0, len(keys), KEYS_PER_IN)])


def any_of(conditions: list):
    """`Or` of the conditions as a balanced tree: pyiceberg binds expressions recursively, and a
    chain of one `Or` per condition overflows Python's stack at a few hundred."""
    from pyiceberg.expressions import Or

    if len(conditions) == 1:
        return conditions[0]
    middle = len(conditions) // 2
    return Or(any_of(conditions[:middle]), any_of(conditions[middle:]))


def row_count(table) -> int:
    """Live rows, from the current snapshot's summary (no data read)."""
    snapshot = None if table is None else table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.get("total-records", 0))


def read_columns(table, columns: Iterable[str]) -> pa.Table:
    """Only the named columns of every live row (cheap: Parquet reads just those columns)."""
    return table.scan(selected_fields=tuple(columns)).to_arrow()


def commit_files(
    catalog,
    name: str,
    files: list[str],
    batch_id: str,
    replace: bool = False,
    properties: dict[str, str] | None = None,
    delete_filter=None,
    check: Callable[[object], None] | None = None,
    delete_filter_for: Callable[[object], object] | None = None,
) -> None:
    """Register Parquet files in one atomic commit. In the same commit, `replace` drops every live
    row and `delete_filter` (an Iceberg expression) the rows it matches: files holding only such
    rows leave the snapshot, files holding some are rewritten without them. `check` sees the table
    as it is before each attempt and may refuse the commit by raising; `delete_filter_for`, given
    the same table, decides the delete filter of that attempt."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.expressions import AlwaysTrue

    from pyiceberg.expressions import AlwaysFalse

    files = [iceberg_path(path) for path in files]
    if replace:
        delete_filter = AlwaysTrue()
    if delete_filter == AlwaysFalse():
        delete_filter = None
    if not files and delete_filter is None and not properties:
        return
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        table = load_table(catalog, name)
        if table is None and files:
            table = catalog.create_table_if_not_exists(
                table_id(name), schema=file_schema(files[0]), properties=TABLE_PROPERTIES
            )
        if table is None:
            return
        if check is not None:
            check(table)
        if delete_filter_for is not None:
            delete_filter = delete_filter_for(table)
        try:
            with table.transaction() as transaction:
                if delete_filter is not None and table.current_snapshot() is not None:
                    with warnings.catch_warnings():  # "did not match any records" is not news
                        warnings.simplefilter("ignore", UserWarning)
                        transaction.delete(delete_filter, snapshot_properties={"verger.batch-id": batch_id})
                if files:
                    transaction.add_files(
                        file_paths=files, snapshot_properties={"verger.batch-id": batch_id}
                    )
                if properties:
                    transaction.set_properties(properties)
            return
        except CommitFailedException:
            if attempt == COMMIT_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)


def file_schema(path: str) -> pa.Schema:
    """The Arrow schema Spark wrote, without Spark's metadata, to create the table from."""
    if path.startswith("file://"):
        schema = pq.read_schema(local_path(path))
    else:
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        schema = pq.read_schema(inner, filesystem=filesystem)
    return schema.remove_metadata()
