"""The order a batch's extraction is committed in, whichever process extracted it.

Quarantine first, so a photo is never without either a row or a reason; then the superseded
versions leave the derived tables; last the features commit, which makes the batch final.

The features table holds one feature version (`layout.FEATURE_VERSION_PROPERTY`): the features
commit checks it and sets it, and only a full recompute may change it, dropping every older row
in the same commit, so fp32, bf16 and int8 features (or two int8 calibrations) never share a PCA.
"""
from __future__ import annotations

from contract import layout
from contract.manifest import Manifest
from emr_job import store
from emr_job.erasure import erasure_filter
from emr_job.images import Reason

TRANSIENT_REASONS = (Reason.FETCH_FAILED,)
DERIVED_TABLES = (layout.PROJECTIONS_TABLE, layout.QUARANTINE_TABLE, layout.SUGGESTIONS_TABLE)


class FeatureVersionMismatch(ValueError):
    """A batch whose features are of another version than the store's."""


def stored_feature_version(table) -> str | None:
    """The version of the features `table` holds; None while it holds none. A store made before
    the version was recorded holds the contract's (fp32)."""
    if table is None or store.row_count(table) == 0:
        return None
    return table.properties.get(layout.FEATURE_VERSION_PROPERTY, layout.FEATURE_VERSION)


def check_feature_version(table, version: str, mode: str) -> None:
    """Refuse a batch that would add `version` features to a store of another version, unless it
    is the full recompute that switches the store (the error says how to do either)."""
    stored = stored_feature_version(table)
    if stored is None or stored == version or mode == "full":
        return
    raise FeatureVersionMismatch(
        f"the store holds features of version {stored}; this batch would add {version}. Run it at the "
        "store's precision (and int8 model), or switch the whole store with a full recompute at the new one")


def commit_extraction(catalog, manifest: Manifest, feature_files: list[str], quarantine_files: list[str],
                      replaced: dict[str, str], transient: list[str], ingested_at: str,
                      feature_version: str = layout.FEATURE_VERSION) -> None:
    """Register the batch's written files; `replaced` maps the keys re-extracted over an older
    stored version to their new etag, `transient` names the keys whose fetch failed transiently
    (they keep their stored row, so they are no replacement)."""
    check_feature_version(store.load_table(catalog, layout.FEATURES_TABLE), feature_version, manifest.mode)
    failed = set(transient)
    replaced = {key: etag for key, etag in replaced.items() if key not in failed}
    store.commit_files(catalog, layout.QUARANTINE_TABLE, quarantine_files, manifest.batch_id)
    if replaced:
        superseded = erasure_filter([], replaced)
        for name in DERIVED_TABLES:
            store.commit_files(catalog, name, [], manifest.batch_id, delete_filter=superseded)

    def check(table) -> None:
        check_feature_version(table, feature_version, manifest.mode)
        if manifest.mode == "full" and switches(table, feature_version) and has_rows_since(table, ingested_at):
            raise FeatureVersionMismatch(
                f"rows of version {stored_feature_version(table)} were committed while this full recompute "
                f"switched the store to {feature_version}: run the full recompute again (it lists them)")

    # decided at each commit attempt, against the table as it is then (a concurrent switch included)
    store.commit_files(catalog, layout.FEATURES_TABLE, feature_files, manifest.batch_id,
                       properties={layout.FEATURE_VERSION_PROPERTY: feature_version}, check=check,
                       delete_filter_for=lambda table: features_delete_filter(
                           manifest, replaced, transient, ingested_at, switches(table, feature_version)))


def switches(table, feature_version: str) -> bool:
    return stored_feature_version(table) not in (None, feature_version)


def has_rows_since(table, ingested_at: str) -> bool:
    """Whether a batch committed rows after `ingested_at` (this run's start)."""
    from pyiceberg.expressions import GreaterThanOrEqual

    return table.scan(row_filter=GreaterThanOrEqual("ingested_at", ingested_at), selected_fields=("image_key",),
                      limit=1).to_arrow().num_rows > 0


def features_delete_filter(manifest: Manifest, replaced: dict[str, str], transient: list[str], ingested_at: str,
                           switching: bool = False):
    """What the features commit deletes along with adding the new rows.

    Incremental and sweep: the previous versions of the keys re-extracted. Full: every row older
    than this run's start except those of transient failures, so a photo keeps its row when its
    re-fetch fails, and rows an incremental batch committed after the listing (younger) stay. A
    full recompute that switches the feature version drops every row, since a kept one would be
    of the old version: the photos whose re-fetch failed stay quarantined as transient failures,
    which the next sweep extracts again (and younger rows refuse the commit, in its check).
    """
    from pyiceberg.expressions import AlwaysTrue, And, LessThan, Not

    if manifest.mode == "full" and switching:
        return AlwaysTrue()
    if manifest.mode == "full":
        older = LessThan("ingested_at", ingested_at)
        return And(older, Not(store.keys_filter(transient))) if transient else older
    return store.keys_filter(replaced)
