"""Photos in the report: nearest neighbours in PCA space, and the inbox photos' suggestions with
each suggested label's exemplar.

Thumbnails are small JPEGs written next to the page, made from the local files the demo
uploaded, so the page opens from disk with no server and no S3 access.
"""
from __future__ import annotations

import hashlib
import html
from pathlib import Path

import pandas as pd

from contract import layout
from verger.explore import latest_rows, nearest

THUMB_PX = 80
THUMBS_DIR = "thumbs"
GALLERY_PHOTOS = 4
NEIGHBOURS = 5


class Thumbnails:
    """Maps a store key to a thumbnail next to the page; keys are `raw/<Label>/…` or inbox keys."""

    def __init__(self, images: Path, inbox: dict[str, str], out: Path) -> None:
        self.images, self.inbox, self.out = images, inbox, out / THUMBS_DIR
        self.out.mkdir(parents=True, exist_ok=True)

    def source(self, key: str) -> Path:
        if key in self.inbox:
            return self.images / self.inbox[key]
        return self.images / key.removeprefix(layout.RAW_PREFIX)

    def tag(self, key: str, caption: str, colour: str = "#333") -> str:
        from PIL import Image

        name = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:16] + ".jpg"
        if not (self.out / name).exists():
            with Image.open(self.source(key)) as photo:
                photo = photo.convert("RGB")
                photo.thumbnail((THUMB_PX, THUMB_PX))
                photo.save(self.out / name, quality=85)
        return (f'<figure><img src="{THUMBS_DIR}/{name}" alt="{html.escape(key)}" title="{html.escape(key)}">'
                f'<figcaption style="color:{colour}">{caption}</figcaption></figure>')


def projected(tables: dict, version: str) -> pd.DataFrame:
    """image_key and the full PCA vector of every image under `version`, latest row per key."""
    from pyiceberg.expressions import EqualTo

    scan = tables[layout.PROJECTIONS_TABLE].scan(row_filter=EqualTo("pca_version", version),
                                                 selected_fields=("image_key", "pca"))
    frame = scan.to_pandas().drop_duplicates("image_key", keep="last").reset_index(drop=True)
    frame["label"] = [layout.label_of(key) for key in frame["image_key"]]
    return frame


def neighbour_gallery(points: pd.DataFrame, thumbs: Thumbnails) -> str:
    """A few labelled photos from labels far apart, each with its nearest stored photos (cosine)."""
    labelled = points[points["label"].notna()].reset_index(drop=True)
    labels = sorted(labelled["label"].unique())
    if len(labelled) <= NEIGHBOURS:
        return "<p>Too few photos for a gallery.</p>"
    chosen = labels[:: max(1, len(labels) // GALLERY_PHOTOS)][:GALLERY_PHOTOS]
    rows = []
    for label in chosen:
        key = labelled.loc[labelled["label"] == label, "image_key"].iloc[0]
        cells = [thumbs.tag(key, f"<b>{html.escape(label)}</b>")]
        for found in nearest(labelled, key, NEIGHBOURS).itertuples():
            colour = "#1a7f37" if found.label == label else "#c62828"
            cells.append(thumbs.tag(found.image_key, f"{html.escape(found.label)}<br>cos {found.similarity:.3f}", colour))
        rows.append(f'<div class="row">{"".join(cells)}</div>')
    return "".join(rows)


def latest_suggestions(tables: dict) -> pd.DataFrame:
    table = tables.get(layout.SUGGESTIONS_TABLE)
    if table is None:
        return pd.DataFrame()
    return latest_rows(table.scan().to_pandas(), "created_at")


def inbox_section(suggestions: pd.DataFrame, thumbs: Thumbnails) -> str:
    """Each inbox photo, where the demo took it from, its top labels and each one's exemplar photo
    (none for a label whose photos were all erased since the refit)."""
    if suggestions.empty:
        return "<p>No inbox photo was processed.</p>"
    rows = []
    for row in suggestions.itertuples():
        source = thumbs.inbox.get(row.image_key)
        truth = layout.label_of(source) if source else None
        ranked = "".join(
            f"<li{' class=hit' if label == truth else ''}>{html.escape(label)}: {score:.3f}</li>"
            for label, score in zip(row.labels, row.scores)
        )
        verdict = " &mdash; <b>uncertain</b>" if row.uncertain else ""
        photo = thumbs.tag(row.image_key, f"<b>{html.escape(row.image_key)}</b><br>taken from "
                                          f"{html.escape(truth or '?')}")
        neighbours = "".join(
            thumbs.tag(key, f"{html.escape(label)}<br>cos {similarity:.3f}")
            for key, label, similarity in zip(row.neighbour_keys, row.neighbour_labels, row.neighbour_similarities)
            if key
        )
        rows.append(f'<div class="row">{photo}<div class="ranked">top labels{verdict}<ol>{ranked}</ol></div>'
                    f'{neighbours}</div>')
    return "".join(rows)
