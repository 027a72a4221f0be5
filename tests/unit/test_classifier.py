"""The label classifier without Spark: the rows the fit sees, the scores it applies, its files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emr_job import logistic, pca
from emr_job.classifier import (
    build, decoded, load, save, softmax, surest_per_label, training_blocks, unit_rows, with_exemplars,
)

LABELS = np.array(["Apple", "Kiwi", "Lemon", "Pear"], object)


def labelled_rows(per_label: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four labels around four random directions of a 16-d space."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(LABELS), 16)) + 2
    x = np.vstack([centre + rng.normal(0, 0.5, (per_label, 16)) for centre in centres])
    return x, np.repeat(LABELS, per_label)


def fitted(x, labels, temperature: float = 1.0):
    """Coefficients from the job's own solver (`emr_job.logistic`) on one block."""
    names, index = np.unique(labels, return_inverse=True)
    solved = logistic.fit_local(unit_rows(x), index, len(names), 100.0)
    return build(names, np.bincount(index), *logistic.split(solved.theta, len(names)), "pca-7", 12,
                 temperature=temperature)


def test_training_blocks_give_each_row_its_label_index_and_unit_length_features_across_batches():
    x, labels = labelled_rows()
    batches = [pd.DataFrame({"label": labels[rows], "features": list(x[rows].astype(np.float32))})
               for rows in (slice(0, 70), slice(70, 70), slice(70, None))]
    # WHEN a partition (with an empty batch in the middle) is turned into training blocks
    blocks = [decoded(row) for frame in training_blocks(iter(batches), LABELS) for _, row in frame.iterrows()]
    # THEN one block per non-empty batch; each row keeps its label as an index into the sorted
    # labels, in order, and has unit length
    assert [len(indices) for indices, _ in blocks] == [70, 50]
    assert np.concatenate([indices for indices, _ in blocks]).tolist() == np.repeat([0, 1, 2, 3], 30).tolist()
    rows = np.vstack([rows for _, rows in blocks])
    assert rows.dtype == np.float32 and rows.shape == (120, 16)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0) and np.allclose(rows, unit_rows(x), atol=1e-6)


def test_scores_are_the_linear_form_of_unit_features_and_do_not_depend_on_a_photos_brightness():
    x, labels = labelled_rows()
    model = fitted(x, labels)
    # THEN the logits are exactly W·x/|x| + b: labels × d per photo, nothing from the store
    assert np.allclose(model.logits(x), unit_rows(x) @ model.weights.T + model.bias)
    assert model.weights.shape == (4, 16) and model.bias.shape == (4,)
    # AND a photo's features scaled by a constant get the same scores
    assert np.allclose(model.logits(3 * x), model.logits(x))


def test_the_fitted_classifier_names_held_out_photos_of_each_label():
    x, labels = labelled_rows()
    held_x, held_labels = labelled_rows(per_label=10, seed=0)
    model = fitted(x, labels)
    probabilities = model.probabilities(held_x + np.random.default_rng(1).normal(0, 0.1, held_x.shape))
    # THEN each photo's scores are a distribution, and the right label comes first
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert (model.labels[probabilities.argmax(axis=1)] == held_labels).mean() >= 0.95


def test_a_higher_temperature_softens_the_scores_without_changing_their_order():
    x, labels = labelled_rows()
    sharp, soft = fitted(x, labels, 1.0), fitted(x, labels, 4.0)
    assert np.array_equal(sharp.probabilities(x).argsort(axis=1), soft.probabilities(x).argsort(axis=1))
    assert (soft.probabilities(x).max(axis=1) < sharp.probabilities(x).max(axis=1)).all()
    assert np.allclose(soft.probabilities(x), softmax(sharp.logits(x) / 4.0))


def test_the_exemplar_of_a_label_is_its_own_photo_the_classifier_is_surest_of():
    x, labels = labelled_rows()
    model = fitted(x, labels)
    projection = pca.fit_from_moments(len(x), x.sum(axis=0), x.T @ x, 0.9)
    frame = pd.DataFrame({"image_key": [f"{label}/{i}.jpg" for i, label in enumerate(labels)],
                          "label": labels, "features": list(x)})
    # WHEN a partition sends its best row per label
    (best,) = surest_per_label(iter([frame]), model, projection)
    # THEN one row per label, the row with the highest score for its own label, with its PCA direction
    own = model.logits(x)[np.arange(len(x)), np.searchsorted(LABELS, labels)]
    assert best["label"].tolist() == LABELS.tolist()
    for label, key, direction in zip(best["label"], best["image_key"], best["direction"]):
        rows = np.flatnonzero(labels == label)
        assert key == f"{label}/{rows[own[rows].argmax()]}.jpg"
        assert np.allclose(direction, unit_rows(projection.project(x[[rows[own[rows].argmax()]]]))[0])


def test_a_saved_classifier_loads_with_the_same_scores_and_provenance(tmp_path):
    x, labels = labelled_rows()
    model = fitted(x, labels)
    model.exemplar_keys, model.exemplars = np.array([f"{label}/0.jpg" for label in LABELS], object), np.eye(4, 3)

    class Rows:  # stands in for the DataFrame of rows the fit saw
        def where(self, condition):
            assert condition == "label IS NOT NULL"
            return self

        def select(self, *columns):
            assert columns == ("image_key", "etag", "label")
            return self

        @property
        def write(self):
            return self

        def parquet(self, path):
            self.path = path

    rows = Rows()
    save(model, str(tmp_path), rows)
    loaded = load(str(tmp_path), model.version)
    # THEN the scores, the labels, the PCA version it belongs to and the fit's settings survive;
    # the rows go beside it
    assert np.array_equal(loaded.logits(x), model.logits(x)) and np.array_equal(loaded.exemplars, model.exemplars)
    assert loaded.labels.tolist() == model.labels.tolist() and loaded.pca_version == "pca-7"
    assert (loaded.penalty_c, loaded.iterations, loaded.rows_per_label.tolist()) == (100.0, 12, [30] * 4)
    assert rows.path == f"{tmp_path}/classifier/{model.version}/rows"


def test_replacing_an_erased_exemplar_changes_only_its_label_and_a_label_with_no_photo_left_cites_none():
    x, labels = labelled_rows()
    model = fitted(x, labels)
    model.exemplar_keys, model.exemplars = np.array([f"{label}/0.jpg" for label in LABELS], object), np.ones((4, 3))
    # GIVEN new exemplars found for Kiwi, and none for Pear (every Pear photo erased)
    chosen = pd.DataFrame({"image_key": ["Kiwi/9.jpg"], "direction": [np.array([0.0, 1.0, 0.0])]}, index=["Kiwi"])
    replaced = with_exemplars(model, chosen, ["Kiwi", "Pear"])
    # THEN Kiwi cites its new photo, Pear cites nothing, the others and the original model are untouched
    assert replaced.exemplar_keys.tolist() == ["Apple/0.jpg", "Kiwi/9.jpg", "Lemon/0.jpg", ""]
    assert replaced.exemplars.tolist() == [[1, 1, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert model.exemplar_keys[1] == "Kiwi/0.jpg" and np.array_equal(replaced.weights, model.weights)
