"""The PCA arithmetic, without Spark: moments → the same model scikit-learn fits."""
import numpy as np
import pytest
from sklearn.decomposition import PCA

from emr_job.pca import choose_k, drift, fit_from_moments


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return rng.normal(size=(400, 40)) @ rng.normal(size=(40, 40)) + 3.0  # correlated, off-centre


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_moments_fit_matches_sklearn_full_svd_up_to_sign(data, target):
    model = fit_from_moments(len(data), data.sum(0), data.T @ data, target)
    reference = PCA(n_components=target, svd_solver="full").fit(data)
    assert model.k == reference.n_components_
    ours, theirs = model.project(data), reference.transform(data)
    signs = np.sign((ours * theirs).sum(axis=0))
    relative = np.linalg.norm(ours - theirs * signs, axis=0) / np.linalg.norm(theirs, axis=0)
    assert relative.max() < 1e-3
    np.testing.assert_allclose(model.explained_variance_ratio[: model.k], reference.explained_variance_ratio_, rtol=1e-6)


def test_projection_is_centred(data):
    model = fit_from_moments(len(data), data.sum(0), data.T @ data, 0.9)
    np.testing.assert_allclose(model.project(data).mean(axis=0), 0, atol=1e-4)


def test_choose_k_reaches_the_target_exactly_at_the_boundary():
    ratios = np.array([0.5, 0.25, 0.25])
    assert choose_k(ratios, 0.75) == 2
    assert choose_k(ratios, 1.0) == 3
    with pytest.raises(ValueError, match="variance target"):
        choose_k(ratios, 1.5)


def test_a_single_row_cannot_be_fitted():
    with pytest.raises(ValueError, match="at least 2 feature rows"):
        fit_from_moments(1, np.ones(3), np.ones((3, 3)), 0.9)


def test_drift_advises_a_refit_below_target_minus_margin():
    assert drift(100.0, 91.0, 9.0, 10, 0.95, 0.05)["refit_advised"] is False
    report = drift(100.0, 89.0, 11.0, 10, 0.95, 0.05)
    assert report["refit_advised"] is True and report["mean_reconstruction_error"] == 1.1
