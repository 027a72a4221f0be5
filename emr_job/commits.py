"""The order a batch's extraction is committed in, whichever process extracted it.

Quarantine first, so a photo is never without either a row or a reason; then the superseded
versions leave the derived tables; last the features commit, which makes the batch final.
"""
from __future__ import annotations

from contract import layout
from contract.manifest import Manifest
from emr_job import store
from emr_job.erasure import erasure_filter
from emr_job.images import Reason

TRANSIENT_REASONS = (Reason.FETCH_FAILED,)
DERIVED_TABLES = (layout.PROJECTIONS_TABLE, layout.QUARANTINE_TABLE, layout.SUGGESTIONS_TABLE)


def commit_extraction(catalog, manifest: Manifest, feature_files: list[str], quarantine_files: list[str],
                      replaced: dict[str, str], transient: list[str], ingested_at: str) -> None:
    """Register the batch's written files; `replaced` maps the keys re-extracted over an older
    stored version to their new etag, `transient` names the keys whose fetch failed transiently
    (they keep their stored row, so they are no replacement)."""
    failed = set(transient)
    replaced = {key: etag for key, etag in replaced.items() if key not in failed}
    store.commit_files(catalog, layout.QUARANTINE_TABLE, quarantine_files, manifest.batch_id)
    if replaced:
        superseded = erasure_filter([], replaced)
        for name in DERIVED_TABLES:
            store.commit_files(catalog, name, [], manifest.batch_id, delete_filter=superseded)
    store.commit_files(catalog, layout.FEATURES_TABLE, feature_files, manifest.batch_id,
                       delete_filter=features_delete_filter(manifest, replaced, transient, ingested_at))


def features_delete_filter(manifest: Manifest, replaced: dict[str, str], transient: list[str], ingested_at: str):
    """What the features commit deletes along with adding the new rows.

    Incremental and sweep: the previous versions of the keys re-extracted. Full: every row older
    than this run's start except those of transient failures, so a photo keeps its row when its
    re-fetch fails, and rows an incremental batch committed after the listing (younger) stay.
    """
    from pyiceberg.expressions import And, LessThan, Not

    if manifest.mode == "full":
        older = LessThan("ingested_at", ingested_at)
        return And(older, Not(store.keys_filter(transient))) if transient else older
    return store.keys_filter(replaced)
