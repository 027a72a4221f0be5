"""The classifier's solver without Spark: the objective, its split into block sums, and L-BFGS."""
from __future__ import annotations

import numpy as np

from emr_job import logistic
from emr_job.classifier import unit_rows

COUNT, DIMS, PENALTY_C = 5, 12, 100.0


def problem(rows: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows of five overlapping labels (so the optimum is finite and not trivially separable)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, COUNT, rows)
    x = rng.normal(0, 1, (COUNT, DIMS))[labels] + rng.normal(0, 1.5, (rows, DIMS))
    return unit_rows(x).astype(np.float32), labels


def mean_objective(theta, labels, rows, penalty_c=PENALTY_C):
    summed = (*logistic.block_sums(theta, labels, rows, COUNT), len(labels))
    return logistic.objective(summed, theta, COUNT, penalty_c)


def test_the_gradient_is_the_derivative_of_the_objective():
    rows, labels = problem()
    theta = np.random.default_rng(1).normal(0, 0.5, COUNT * DIMS + COUNT)
    strong = 0.05  # a penalty large enough that a wrong penalty gradient would show
    _, gradient = mean_objective(theta, labels, rows, strong)
    # THEN central differences along random directions match the analytic gradient (steps large
    # enough for the float32 products)
    for direction in np.random.default_rng(2).normal(0, 1, (5, theta.size)):
        step = 1e-2
        ahead, _ = mean_objective(theta + step * direction, labels, rows, strong)
        behind, _ = mean_objective(theta - step * direction, labels, rows, strong)
        assert np.isclose((ahead - behind) / (2 * step), gradient @ direction, rtol=1e-3)


def test_summing_blocks_gives_exactly_the_objective_of_all_rows_however_they_are_split():
    rows, labels = problem()
    theta = np.random.default_rng(1).normal(0, 0.5, COUNT * DIMS + COUNT)
    whole = mean_objective(theta, labels, rows)
    # WHEN the rows are cut into uneven blocks (as Spark's partitions cut them) and the sums added
    blocks = [(*logistic.block_sums(theta, labels[part], rows[part], COUNT), len(labels[part]))
              for part in (slice(0, 7), slice(7, 150), slice(150, None))]
    summed = blocks[0]
    for block in blocks[1:]:
        summed = logistic.add(summed, block)
    split = logistic.objective(summed, theta, COUNT, PENALTY_C)
    # THEN the objective and gradient are those of the whole
    assert np.isclose(split[0], whole[0], rtol=1e-6) and np.allclose(split[1], whole[1], rtol=1e-5, atol=1e-9)


def test_the_fit_reaches_the_optimum_scikit_learn_finds_for_the_same_c():
    from sklearn.linear_model import LogisticRegression

    rows, labels = problem()
    ours = logistic.fit_local(rows, labels, COUNT, PENALTY_C)
    # GIVEN scikit-learn's solver run to a much tighter tolerance (summed loss + ‖W‖²/2C)
    theirs = LogisticRegression(C=PENALTY_C, tol=1e-10, max_iter=5000).fit(rows.astype(np.float64), labels)
    reference = np.concatenate([theirs.coef_.ravel(), theirs.intercept_])
    # THEN ours converged to the same objective value and the same probabilities
    assert ours.converged and ours.iterations < logistic.MAX_ITERATIONS
    assert np.isclose(ours.objective, mean_objective(reference, labels, rows)[0], rtol=1e-4)
    weights, bias = logistic.split(ours.theta, COUNT)
    assert np.abs(softmax_rows(rows @ weights.T + bias) - theirs.predict_proba(rows)).max() < 0.01


def softmax_rows(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_a_fit_cut_short_by_its_iteration_budget_says_it_did_not_converge():
    bowl = lambda x: (float((np.arange(1, 6) * (x - 1) ** 2).sum()), 2 * np.arange(1, 6) * (x - 1))
    # WHEN the budget is one iteration  THEN it stops there and says so; with room it converges
    short = logistic.minimise(bowl, np.zeros(5), max_iterations=1)
    assert (short.iterations, short.converged) == (1, False)
    assert logistic.minimise(bowl, np.zeros(5)).converged


def test_a_gradient_that_points_the_wrong_way_ends_the_search_instead_of_looping():
    # GIVEN a broken objective whose "gradient" points uphill: no step along it ever decreases it
    uphill = lambda x: (float(x @ x), -2 * x)
    found = logistic.minimise(uphill, np.ones(3))
    # THEN the search gives up at the starting point and says it did not converge
    assert not found.converged and found.iterations == 0 and np.array_equal(found.theta, np.ones(3))
