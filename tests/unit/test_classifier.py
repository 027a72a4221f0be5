"""The label classifier without Spark: moments that add up across partitions, the fit, the files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emr_job import pca
from emr_job.classifier import fit_from_moments, load, moments_of, partial_moments, save

LABELS = np.array(["Apple", "Kiwi", "Lemon", "Pear"], object)


def labelled_rows(per_label: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four labels around four random directions of a 16-d space."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(LABELS), 16)) + 2
    x = np.vstack([centre + rng.normal(0, 0.5, (per_label, 16)) for centre in centres])
    return x, np.repeat(LABELS, per_label)


def test_moments_of_partitions_add_up_to_the_moments_of_all_rows_even_with_different_labels():
    x, labels = labelled_rows()
    # GIVEN two partitions, one without any Pear
    first = np.flatnonzero(labels != "Pear")[:50]
    second = np.setdiff1d(np.arange(len(x)), first)
    # WHEN their moments are added
    combined = moments_of(x[first], labels[first]) + moments_of(x[second], labels[second])
    whole = moments_of(x, labels)
    # THEN they equal the moments of every row
    assert combined.labels.tolist() == whole.labels.tolist() == sorted(LABELS)
    assert combined.counts.tolist() == [30, 30, 30, 30]
    assert np.allclose(combined.sums, whole.sums) and np.allclose(combined.outer, whole.outer)


def test_partial_moments_summarises_a_partition_arriving_in_several_batches():
    x, labels = labelled_rows()
    batches = [pd.DataFrame({"label": labels[rows], "features": list(x[rows].astype(np.float32))})
               for rows in (slice(0, 70), slice(70, 70), slice(70, None))]
    projection = pca.fit_from_moments(len(x), x.sum(axis=0), x.T @ x, 0.9)
    # WHEN the partition (with an empty batch in the middle) is summarised in PCA space
    (summary,) = partial_moments(iter(batches), projection)
    # THEN one row holds the counts and sums of every row's PCA direction
    expected = moments_of(projection.project(x), labels).sums
    assert summary["labels"][0] == sorted(LABELS) and summary["counts"][0] == [30, 30, 30, 30]
    assert np.allclose(np.frombuffer(summary["sums"][0]).reshape(4, projection.k), expected, atol=1e-5)


def test_the_fitted_classifier_names_held_out_photos_of_each_label():
    x, labels = labelled_rows()
    held_x, held_labels = labelled_rows(per_label=10, seed=0)
    model = fit_from_moments(moments_of(x, labels), "pca-1")
    probabilities = model.probabilities(held_x + np.random.default_rng(1).normal(0, 0.1, held_x.shape))
    # THEN each photo's scores are a distribution, and the right label comes first
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert (model.labels[probabilities.argmax(axis=1)] == held_labels).mean() >= 0.95


def test_shrinkage_makes_a_fit_possible_with_fewer_photos_than_dimensions():
    x, labels = labelled_rows(per_label=2)  # 8 rows in 16 dimensions: the pooled covariance is singular
    model = fit_from_moments(moments_of(x, labels), "pca-1")
    # THEN the scores are finite and name each photo's own label
    assert np.isfinite(model.logits(x)).all()
    assert model.labels[model.logits(x).argmax(axis=1)].tolist() == labels.tolist()


def test_a_fit_with_no_more_rows_than_labels_says_so():
    x, labels = labelled_rows(per_label=1)
    with pytest.raises(ValueError, match="more labelled rows than labels: 4 rows, 4 labels"):
        fit_from_moments(moments_of(x, labels), "pca-1")


def test_a_saved_classifier_loads_with_the_same_scores_and_provenance(tmp_path):
    x, labels = labelled_rows()
    model = fit_from_moments(moments_of(x, labels), "pca-7")

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
    # THEN the scores, the labels and the PCA version it belongs to survive; the rows go beside it
    assert np.allclose(loaded.logits(x), model.logits(x))
    assert loaded.labels.tolist() == model.labels.tolist() and loaded.pca_version == "pca-7"
    assert rows.path == f"{tmp_path}/classifier/{model.version}/rows"
