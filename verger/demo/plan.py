"""Which photos the demo uploads in each phase: pure functions over the folder's keys."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

INBOX_PHOTOS = 3


class PlanError(ValueError):
    """The sample cannot give every phase something to do; the message says what to change."""


@dataclass(frozen=True)
class Plan:
    """Keys relative to the images folder; `inbox` maps the S3 key under inbox/ to its source key."""

    first_wave: list[str]
    second_wave: list[str]
    inbox: dict[str, str]

    @property
    def all_keys(self) -> list[str]:
        return sorted([*self.first_wave, *self.second_wave, *self.inbox.values()])


def plan_phases(keys: list[str], second_wave_share: float, inbox_photos: int = INBOX_PHOTOS) -> Plan:
    """Split sampled keys so that both waves hold photos of every label, and a few go to the inbox.

    Every n-th photo of a label (n = 1 / share) is held back for the second wave, at least one
    per label; the inbox photos come from labels with three or more, so that they too keep a photo
    in each wave (the store then knows the label the suggestion should find).

    Examples
    --------
    >>> plan = plan_phases(["A/1.jpg", "A/2.jpg", "A/3.jpg", "B/1.jpg", "B/2.jpg"], 0.2, 1)
    >>> plan.first_wave, plan.second_wave, plan.inbox
    (['A/1.jpg', 'B/1.jpg'], ['A/3.jpg', 'B/2.jpg'], {'inbox/photo-1.jpg': 'A/2.jpg'})
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
    first, second, inbox = [], [], {}
    for index, group in enumerate(by_label.values()):
        held = [key for i, key in enumerate(group) if not (i + 1) % every] or group[-1:]
        kept = [key for key in group if key not in held]
        if len(inbox) < inbox_photos and len(kept) >= 2 and index % spread == 0:
            inbox[f"inbox/photo-{len(inbox) + 1}{Path(kept[-1]).suffix}"] = kept.pop()
        first += kept
        second += held
    return Plan(first, second, inbox)
