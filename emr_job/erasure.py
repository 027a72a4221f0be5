"""Erasure: a deleted photo (or a version replaced since) leaves every table and its suggestion JSON.

Order-safe: a removal is checked against the object's current state, so a removal processed after
a re-upload erases only the versions other than the one in the bucket now. Suggestions that cited
an erased photo as a neighbour are recomputed without it, and the suggestions commit that adds
them also deletes the old ones, so a run killed halfway finds the same work on its re-run.
The rows leave the current snapshots here; the files that held them go when `verger maintain`
expires the older snapshots (see emr_job.upkeep).
"""
from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from contract import layout
from contract.manifest import ManifestItem
from emr_job import blobs, listing, store
from emr_job.readers import current_features, table_rows
from emr_job.suggest import json_uri, suggest_for_batch

ERASED_TABLES = (layout.FEATURES_TABLE, layout.PROJECTIONS_TABLE, layout.QUARANTINE_TABLE)


def erase_removed(spark: SparkSession, catalog, warehouse: str, source: str, batch_id: str,
                  removals: list[ManifestItem]) -> dict:
    """Erase what `ObjectRemoved` notifications name, unless the object exists again: then only
    the versions other than its current one."""
    keys = sorted({item.key for item in removals})
    present = listing.current_etags(source, keys)
    return erase(spark, catalog, warehouse, source, batch_id, [key for key in keys if key not in present], present)


def erase(spark: SparkSession, catalog, warehouse: str, source: str | None, batch_id: str,
          gone: list[str], keep: dict[str, str] | None = None) -> dict:
    """Erase every row of the `gone` keys, and the rows of the `keep` keys whose etag differs from
    the one given, from every table; delete the gone photos' suggestion JSON; recompute the
    suggestions that cited a gone photo."""
    condition = erasure_filter(gone, keep or {})
    citing = sorted(set(citing_photos(spark, catalog, gone)) - set(gone))
    for name in ERASED_TABLES:
        store.commit_files(catalog, name, [], batch_id, delete_filter=condition)
    suggestions = resuggest(spark, catalog, warehouse, source, batch_id, citing, condition)
    for key in gone:
        blobs.delete(json_uri(source or "file:///", warehouse, key))
    return {"photos_erased": len(gone), "present_again_older_versions_erased": len(keep or {}),
            "suggestions_citing_them": len(citing), "resuggested": suggestions}


def erasure_filter(gone: list[str], keep: dict[str, str]):
    """Rows of the gone keys, or of the kept keys under another etag, as one Iceberg expression.

    Examples
    --------
    >>> str(erasure_filter([], {}))
    'AlwaysFalse()'
    """
    from pyiceberg.expressions import And, EqualTo, NotEqualTo

    others = [And(EqualTo("image_key", key), NotEqualTo("etag", etag)) for key, etag in sorted(keep.items())]
    return store.any_of([store.keys_filter(gone), *others])


def citing_photos(spark: SparkSession, catalog, keys: list[str]) -> list[str]:
    """Photos whose stored suggestions name one of `keys` as a neighbour (one distributed scan of
    two columns of the suggestions table; only the matching keys reach the driver)."""
    if not keys:
        return []
    rows = table_rows(spark, catalog, layout.SUGGESTIONS_TABLE, "image_key string, neighbour_keys array<string>")
    erased = F.array(*[F.lit(key) for key in keys])
    return [row.image_key for row in rows.where(F.arrays_overlap("neighbour_keys", erased))
            .select("image_key").distinct().collect()]


def resuggest(spark, catalog, warehouse: str, source: str | None, batch_id: str, keys: list[str], condition) -> dict:
    """New suggestions for `keys`, committed with the deletion of `condition`'s rows and of their
    old suggestions; when none can be made (no labelled photo left), the old ones are deleted and
    their JSON with them, rather than left citing an erased photo."""
    replaced = condition if not keys else _or(condition, store.keys_filter(keys))
    outcome = {"action": "none", "reason": "no suggestion cited an erased photo"}
    if keys:
        rows = current_features(spark, catalog, keys)
        outcome = suggest_for_batch(spark, catalog, warehouse, source or "file:///", batch_id, rows, replaced)
    if outcome.get("action") != "suggested":
        store.commit_files(catalog, layout.SUGGESTIONS_TABLE, [], batch_id, delete_filter=replaced)
        for key in keys:
            blobs.delete(json_uri(source or "file:///", warehouse, key))
    return outcome


def _or(left, right):
    from pyiceberg.expressions import Or

    return Or(left, right)
