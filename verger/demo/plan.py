"""Which photos the demo uploads in each phase: pure functions over the folder's keys."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

INBOX_PHOTOS = 3
DELETED_PHOTOS = 3


class PlanError(ValueError):
    """The sample cannot give every phase something to do; the message says what to change."""


@dataclass(frozen=True)
class Plan:
    """Keys relative to the images folder; `inbox` maps the S3 key under inbox/ to its source key;
    `deleted` are first-wave photos deleted from the bucket after the inbox phase."""

    first_wave: list[str]
    second_wave: list[str]
    inbox: dict[str, str]
    deleted: list[str]

    @property
    def all_keys(self) -> list[str]:
        return sorted([*self.first_wave, *self.second_wave, *self.inbox.values()])


def plan_phases(keys: list[str], second_wave_share: float, inbox_photos: int = INBOX_PHOTOS,
                deleted_photos: int = DELETED_PHOTOS) -> Plan:
    """Split sampled keys so that both waves hold photos of every label, and a few go to the inbox.

    Every n-th photo of a label (n = 1 / share) is held back for the second wave, at least one
    per label; the inbox photos come from labels with three or more, so that they too keep a photo
    in each wave (the store then knows the label the suggestion should find). The deleted photos
    are first-wave frames next to an inbox photo where possible (likely cited by its suggestion),
    and only from labels that keep another first-wave photo.

    Examples
    --------
    >>> plan = plan_phases(["A/1.jpg", "A/2.jpg", "A/3.jpg", "A/4.jpg", "A/5.jpg", "B/1.jpg", "B/2.jpg"], 0.2, 1, 1)
    >>> plan.first_wave, plan.second_wave, plan.inbox, plan.deleted
    (['A/1.jpg', 'A/2.jpg', 'A/3.jpg', 'B/1.jpg'], ['A/5.jpg', 'B/2.jpg'], {'inbox/photo-1.jpg': 'A/4.jpg'}, ['A/3.jpg'])
    """
    if not 0 < second_wave_share < 1:
        raise PlanError(f"second-wave share must be in (0, 1), got {second_wave_share}")
    by_label: dict[str, list[str]] = {}
    for key in sorted(keys):
        by_label.setdefault(os.path.dirname(key), []).append(key)
    short = sorted(label for label, group in by_label.items() if len(group) < 2)
    if short:
        raise PlanError(
            f"{len(short)} of {len(by_label)} labels have fewer than 2 photos in the sample "
            f"(e.g. {short[0]!r}): each label needs one per wave. Use --limit of at least "
            f"{2 * len(by_label)} (2 x the number of labels), or omit it"
        )
    every = max(2, round(1 / second_wave_share))
    spread = max(1, len(by_label) // max(1, inbox_photos))  # inbox photos from labels far apart
    first, second, inbox, near_inbox, others = [], [], {}, [], []
    for index, group in enumerate(by_label.values()):
        held = [key for i, key in enumerate(group) if not (i + 1) % every] or group[-1:]
        kept = [key for key in group if key not in held]
        donated = len(inbox) < inbox_photos and len(kept) >= 2 and index % spread == 0
        if donated:
            inbox[f"inbox/photo-{len(inbox) + 1}{Path(kept[-1]).suffix}"] = kept.pop()
        if len(kept) >= 2:
            (near_inbox if donated else others).append(kept[-1])
        first += kept
        second += held
    return Plan(first, second, inbox, (near_inbox + others)[:deleted_photos])


def round_robin(keys: list[str]) -> list[str]:
    """One photo of each label in turn: the upload order that makes the first batch (and so the
    first PCA) see every label, as a day of uploads from many users would.

    Examples
    --------
    >>> round_robin(["A/1.jpg", "A/2.jpg", "A/3.jpg", "B/1.jpg"])
    ['A/1.jpg', 'B/1.jpg', 'A/2.jpg', 'A/3.jpg']
    """
    by_label: dict[str, list[str]] = {}
    for key in keys:
        by_label.setdefault(os.path.dirname(key), []).append(key)
    turns = itertools.zip_longest(*by_label.values())
    return [key for turn in turns for key in turn if key is not None]
