"""The evaluation's splits keep capture sessions apart, and its figures mean what they say."""
from __future__ import annotations

import numpy as np
import pytest

from emr_job.classifier import softmax
from verger.suggest_evaluation import (
    METHODS, SHIPPED, best_temperature, evaluate, expected_calibration_error, figures, series_and_frames,
    split_folds, uncertainty_table,
)


def fruits_keys(labels=("Kiwi", "Lemon"), series=("", "r_", "r2_"), frames=range(3, 23)) -> tuple[np.ndarray, np.ndarray]:
    """Labels and Fruits-360 keys: every label filmed in every series, 20 frames each."""
    rows = [(label, f"raw/{label}/{s}{frame}_100.jpg") for label in labels for s in series for frame in frames]
    return np.array([label for label, _ in rows], object), np.array([key for _, key in rows], object)


def video_frames(keys: np.ndarray, mask: np.ndarray) -> set[tuple[str, int]]:
    series, frames = series_and_frames(keys)
    labels = [key.split("/")[1] for key in keys]
    return {(f"{label}/{s}", frame) for label, s, frame, m in zip(labels, series, frames, mask) if m}


def test_gap_split_leaves_no_test_frame_with_a_neighbouring_frame_of_its_video_in_training():
    labels, keys = fruits_keys()
    ((train, test),) = split_folds("gap", labels, keys)
    trained, tested = video_frames(keys, train), video_frames(keys, test)
    # THEN test frames exist, and none has a frame within 2 of it (same video) in training
    assert len(tested) == 2 * 3 * 4
    assert not any((video, frame + step) in trained for video, frame in tested for step in (-2, -1, 1, 2))


def test_block_split_holds_out_the_last_fifth_of_every_video():
    labels, keys = fruits_keys()
    ((train, test),) = split_folds("block", labels, keys)
    _, frames = series_and_frames(keys)
    assert test.sum() == 2 * 3 * 4 and set(frames[test]) == {19, 20, 21, 22} and not (train & test).any()


def test_series_split_trains_on_the_plain_series_only():
    labels, keys = fruits_keys()
    ((train, test),) = split_folds("series", labels, keys)
    series, _ = series_and_frames(keys)
    assert set(series[train]) == {""} and set(series[test]) == {"r_", "r2_"}


def test_leave_one_series_out_tests_each_series_once_and_only_labels_seen_in_training():
    # GIVEN Lemon filmed in the plain series only, Kiwi in all three
    labels, keys = fruits_keys(("Kiwi",))
    lemon_labels, lemon_keys = fruits_keys(("Lemon",), ("",))
    labels, keys = np.concatenate([labels, lemon_labels]), np.concatenate([keys, lemon_keys])
    folds = list(split_folds("loso", labels, keys))
    series, _ = series_and_frames(keys)
    # THEN three folds, each testing one series, and Lemon is never tested (no training rows when held out)
    assert [sorted(set(series[test])) for _, test in folds] == [[""], ["r2_"], ["r_"]]
    assert all(not (series[train] == series[test][0]).any() for train, test in folds)
    assert "Lemon" not in set(np.concatenate([labels[test] for _, test in folds]))


def test_photos_whose_names_are_not_fruits_360_stay_in_training():
    labels = np.array(["Kiwi", "Kiwi"], object)
    keys = np.array(["raw/Kiwi/r_5_100.jpg", "raw/Kiwi/holiday.jpg"], object)
    for split in ("block", "gap", "series", "loso"):
        for train, test in split_folds(split, labels, keys):
            assert train[1] and not test[1]


def test_an_unknown_split_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown split 'random'"):
        list(split_folds("random", *fruits_keys()))


def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    truth = np.array([0, 0, 0, 1])
    honest = np.tile([0.75, 0.25], (4, 1))  # 75 % sure, 3 of 4 right
    boastful = np.tile([0.99, 0.01], (4, 1))
    assert expected_calibration_error(honest, truth) == pytest.approx(0.0)
    assert expected_calibration_error(boastful, truth) == pytest.approx(0.24)


def test_best_temperature_undoes_a_known_overconfidence():
    rng = np.random.default_rng(0)
    # GIVEN labels drawn from softmax(logits) and the same logits made 4 times too sharp
    logits = rng.normal(0, 2, (4000, 5))
    truth = np.array([rng.choice(5, p=p) for p in softmax(logits)])
    # THEN the temperature found is close to 4
    assert best_temperature(4 * logits, truth) == pytest.approx(4.0, rel=0.15)


def test_figures_and_the_uncertainty_table_count_what_they_say():
    # GIVEN three photos: right and sure, right but unsure, wrong and unsure (right label second)
    probabilities = np.array([[0.9, 0.1, 0.0], [0.45, 0.35, 0.2], [0.2, 0.35, 0.45]])
    truth = np.array([0, 0, 1])
    outcome = figures(probabilities, truth)
    assert (outcome["top1"], outcome["top5"]) == (0.6667, 1.0)
    at_half = next(row for row in uncertainty_table(probabilities, truth) if row["threshold"] == 0.5)
    # THEN at 0.5 two are flagged (one wrong, one right) and the one kept is right
    assert at_half == {"threshold": 0.5, "flagged_share": 0.6667, "top1_when_confident": 1.0,
                       "wrong_flagged": 1, "right_flagged": 1}


def test_evaluate_reports_every_method_on_every_split_in_one_table():
    labels, keys = fruits_keys(("Kiwi", "Lemon", "Pear"))
    rng = np.random.default_rng(0)
    centres = {label: rng.normal(0, 1, 32) + 3 for label in set(labels)}
    features = np.stack([centres[label] + rng.normal(0, 0.3, 32) for label in labels])
    # WHEN every method is evaluated on every split
    outcome = evaluate(features, labels, keys)
    # THEN one row per (split, method), each with figures in range, and the shipped method's
    # calibration and uncertainty tables
    assert [(row["split"], row["method"]) for row in outcome["table"]] == [
        (split, method) for split in ("block", "gap", "series", "loso") for method in METHODS]
    assert all(0 <= row["ece"] <= 1 and row["top5"] >= row["top1"] >= 0.9 for row in outcome["table"])
    assert set(outcome["uncertain_thresholds"]) == {"block", "gap", "series", "loso"}
    assert set(outcome["calibration"]) == {"series", "loso"}
    assert all(entry["best_temperature"] > 0 for entry in outcome["calibration"].values())
    assert SHIPPED in METHODS
