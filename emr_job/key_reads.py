"""What a batch that names its keys reads about them, on the driver, with no Spark job.

A manifest from the event flow names at most a few thousand keys, and what the job must decide
about them (stored already? quarantined? projected? suggested?) needs only short columns of the
files whose key bounds may hold them. pyiceberg reads those columns straight into Arrow on the
driver in a fraction of a second, where the same decision as Spark joins cost one job each, about
half a second apiece even on a tiny batch. The listing modes (sweep, full), which compare a whole
bucket with the whole store, keep the distributed joins of `emr_job.readers`.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd

from contract import layout
from emr_job import store

VERSION_COLUMNS = ("image_key", "etag", "label", "batch_id", "ingested_at")
ROW_ID = ["image_key", "etag"]


# The last few reads, by table version: a batch asks the same table about the same keys more than
# once (its projections and its suggestions both start from the current versions), and a table
# version never changes, so an answer holds until the next commit.
RECENT_READS = 4
_recent: OrderedDict[tuple, pd.DataFrame] = OrderedDict()


def key_rows(catalog, name: str, columns: tuple[str, ...], keys: list[str]) -> pd.DataFrame:
    """The named columns of the table's live rows of these keys (an empty frame with those
    columns when there are none, or no table yet)."""
    table = store.load_table(catalog, name)
    if table is None or not keys:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})
    version = (table.metadata_location, columns, tuple(keys))
    if version not in _recent:
        rows = table.scan(row_filter=store.keys_filter(keys), selected_fields=columns).to_pandas()
        _recent[version] = rows[list(columns)].astype(object)
        while len(_recent) > RECENT_READS:
            _recent.popitem(last=False)
    return _recent[version].copy(deep=False)


def current_versions(catalog, keys: list[str]) -> pd.DataFrame:
    """The current row per key (the newest ingestion; a re-upload supersedes the older row),
    without its features: image_key, etag, label, batch_id, ingested_at."""
    rows = key_rows(catalog, layout.FEATURES_TABLE, VERSION_COLUMNS, keys)
    newest_first = rows.sort_values(["ingested_at", "batch_id"], ascending=False, kind="stable")
    return newest_first.drop_duplicates("image_key").sort_values("image_key").reset_index(drop=True)


def without(rows: pd.DataFrame, done: pd.DataFrame) -> pd.DataFrame:
    """The rows of `rows` whose (image_key, etag) is not in `done`.

    Examples
    --------
    >>> rows = pd.DataFrame({"image_key": ["a", "b", "c"], "etag": ["1", "1", "1"]})
    >>> without(rows, pd.DataFrame({"image_key": ["b", "c"], "etag": ["1", "2"]}))["image_key"].tolist()
    ['a', 'c']
    """
    pairs = set(zip(done["image_key"], done["etag"]))
    keep = np.array([(key, etag) not in pairs for key, etag in zip(rows["image_key"], rows["etag"])], bool)
    return rows.loc[keep].reset_index(drop=True)


def unprojected(catalog, keys: list[str], version: str) -> pd.DataFrame:
    """Current (image_key, etag) of `keys` with no projection under PCA `version`."""
    done = key_rows(catalog, layout.PROJECTIONS_TABLE, ("image_key", "etag", "pca_version"), keys)
    return without(current_versions(catalog, keys)[ROW_ID], done[done["pca_version"] == version])


def unsuggested(catalog, keys: list[str]) -> pd.DataFrame:
    """Current (image_key, etag) of the unlabelled photos among `keys` with no suggestion."""
    photos = current_versions(catalog, keys)
    done = key_rows(catalog, layout.SUGGESTIONS_TABLE, ("image_key", "etag"), keys)
    return without(photos[photos["label"].isna()][ROW_ID], done)


def with_features(catalog, wanted: pd.DataFrame, fresh: dict[tuple[str, str], np.ndarray]) -> pd.DataFrame:
    """image_key, etag, features of the `wanted` rows: from `fresh` (this run's extraction, still
    in memory) or, for rows an earlier, killed run committed without finishing them, read back
    from the files whose key bounds may hold their keys."""
    pairs = list(zip(wanted["image_key"], wanted["etag"]))
    stored: dict[tuple[str, str], np.ndarray] = {}
    missing = sorted({key for key, etag in pairs if (key, etag) not in fresh})
    if missing:
        rows = key_rows(catalog, layout.FEATURES_TABLE, ("image_key", "etag", "features"), missing)
        stored = {(key, etag): np.asarray(vector, np.float32)
                  for key, etag, vector in zip(rows["image_key"], rows["etag"], rows["features"])}
    found = [(key, etag, fresh[key, etag] if (key, etag) in fresh else stored.get((key, etag)))
             for key, etag in pairs]
    return pd.DataFrame([row for row in found if row[2] is not None], columns=["image_key", "etag", "features"])
