"""Which photos each demo phase uploads."""
from __future__ import annotations

import os

import pytest

from verger.demo.plan import PlanError, plan_phases


def keys(per_label: dict[str, int]) -> list[str]:
    return [f"{label}/{i:03d}.jpg" for label, count in per_label.items() for i in range(count)]


@pytest.mark.parametrize("per_label", [2, 3, 4, 7, 30])
def test_both_waves_hold_every_label_whatever_the_sample_size(per_label):
    # GIVEN 131 labels with `per_label` photos each (the smallest --limit allowed is 2 x labels)
    sample = keys({f"Label {n}": per_label for n in range(131)})
    plan = plan_phases(sample, 0.2)
    # THEN no wave is empty: each holds a photo of every label, and nothing is lost or duplicated
    labels = lambda wave: {os.path.dirname(key) for key in wave}  # noqa: E731
    assert labels(plan.first_wave) == labels(plan.second_wave) == labels(sample)
    assert sorted(plan.all_keys) == sorted(sample)
    assert len(plan.inbox) == (3 if per_label >= 3 else 0)


def test_inbox_photos_come_from_labels_far_apart_and_leave_the_waves():
    sample = keys({f"Label {n:03d}": 5 for n in range(131)})
    plan = plan_phases(sample, 0.2)
    sources = sorted(plan.inbox.values())
    assert [os.path.dirname(s) for s in sources] == ["Label 000", "Label 043", "Label 086"]
    assert not set(sources) & set(plan.first_wave + plan.second_wave)
    assert sorted(plan.inbox) == ["inbox/photo-1.jpg", "inbox/photo-2.jpg", "inbox/photo-3.jpg"]


def test_a_sample_with_a_single_photo_of_a_label_is_refused_with_the_limit_to_use():
    # GIVEN --limit 5 over 3 labels: one label gets a single photo
    with pytest.raises(PlanError, match=r"1 of 3 labels have fewer than 2 photos.*--limit of at least 6"):
        plan_phases(keys({"A": 2, "B": 2, "C": 1}), 0.2)


def test_second_wave_share_must_be_a_fraction():
    with pytest.raises(PlanError, match="share"):
        plan_phases(keys({"A": 4}), 1.0)
