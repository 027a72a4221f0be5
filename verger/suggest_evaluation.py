"""The arithmetic of `verger evaluate-suggestions`: session-separating splits, candidate methods, and
the figures that compare them (top-1, top-5, expected calibration error, the uncertainty table).

Fruits-360 frames of one (label, series) come from one rotating video, so a random split puts
near-identical neighbours on both sides and flatters any method that memorises the session. The
splits here are named after what they keep apart; `series` and `loso` separate capture sessions
and are the ones methods are chosen and tuned on (`block` only checks nothing got worse there).
Every method sees the training rows only. The shipped one is fitted and scores through the job's
own code (`emr_job.logistic`, `emr_job.classifier`).
"""
from __future__ import annotations

import re
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from contract.layout import DEFAULT_VARIANCE_TARGET
from emr_job import classifier, logistic, pca

FILE_PATTERN = re.compile(r"(?:^|/)(r[0-9]*_)?([0-9]+)_[^/]*$")  # Fruits-360: [r_|r2_…]<frame>_<size>.jpg
SPLITS = ("block", "gap", "series", "loso")
HELD_OUT_SHARE = 0.2
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CALIBRATION_BINS = 15
SHIPPED = "logistic-regression/l2 (shipped)"

Method = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def series_and_frames(image_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each key's rotation series ("" for the plain one, "r_", "r2_", …) and frame number (-1 when
    the file name is not Fruits-360's; such rows always stay in training).

    Examples
    --------
    >>> series_and_frames(np.array(["raw/Kiwi/r2_31_100.jpg", "raw/Kiwi/7_100.jpg", "raw/Kiwi/x.jpg"]))
    (array(['r2_', '', ''], dtype=object), array([31,  7, -1]))
    """
    matches = [FILE_PATTERN.search(key) for key in image_keys]
    series = np.array([(m.group(1) or "") if m else "" for m in matches], object)
    frames = np.array([int(m.group(2)) if m else -1 for m in matches])
    return series, frames


def position_in_video(labels: np.ndarray, series: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Each row's rank by frame number within its (label, series) video, as a share in (0, 1].

    Examples
    --------
    >>> position_in_video(np.array(["a"] * 4), np.array([""] * 4, object), np.array([9, 3, 5, 7])).tolist()
    [1.0, 0.25, 0.5, 0.75]
    """
    videos = pd.DataFrame({"label": labels, "series": series, "frame": frames}).groupby(["label", "series"])["frame"]
    return (videos.rank(method="first") / videos.transform("size")).to_numpy()


def split_folds(split: str, labels: np.ndarray, image_keys: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(train, test) boolean masks; a test row's label always has training rows.

    block: the last fifth of every video by frame number (its first test frame has a training
    neighbour). gap: the middle fifth, with a tenth on either side left out, so no test frame has a
    neighbouring frame in training. series: train on the plain series, test on every r*_ series.
    loso: leave one series out, once per series.
    """
    series, frames = series_and_frames(image_keys)
    named = frames >= 0
    share = position_in_video(labels, series, frames)
    if split == "block":
        folds = [(~named | (share <= 1 - HELD_OUT_SHARE), named & (share > 1 - HELD_OUT_SHARE))]
    elif split == "gap":
        middle = (share > 0.4) & (share <= 0.6)
        folds = [(~named | (share <= 0.3) | (share > 0.7), named & middle)]
    elif split == "series":
        folds = [(~named | (series == ""), named & (series != ""))]
    elif split == "loso":
        folds = [(~named | (series != held), named & (series == held)) for held in np.unique(series[named])]
    else:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    for train, test in folds:
        yield train, test & np.isin(labels, labels[train])


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Σ over confidence bins of |accuracy − mean confidence| × share of photos in the bin.

    Examples
    --------
    >>> round(expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1])), 3)
    0.4
    """
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for b in np.unique(which):
        in_bin = which == b
        error += in_bin.mean() * abs((predicted[in_bin] == truth[in_bin]).mean() - confidence[in_bin].mean())
    return float(error)


def best_temperature(logits: np.ndarray, truth: np.ndarray) -> float:
    """The softmax temperature with the lowest negative log-likelihood (a log-spaced grid).

    Examples
    --------
    >>> logits = np.array([[4.0, 0.0]] * 3 + [[0.0, 4.0]])
    >>> 2.0 < best_temperature(logits, np.array([0, 0, 0, 0])) < 4.0
    True
    """
    best, chosen = np.inf, 1.0
    for temperature in np.geomspace(0.01, 100, 161):
        p = classifier.softmax(logits / temperature)
        nll = -np.log(np.clip(p[np.arange(len(p)), truth], 1e-12, None)).mean()
        if nll < best:
            best, chosen = nll, float(temperature)
    return chosen


def figures(probabilities: np.ndarray, truth: np.ndarray) -> dict:
    """Top-1, top-5 and calibration of (n, C) probabilities against (n,) label indices."""
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :5]
    return {"top1": round(float((top[:, 0] == truth).mean()), 4),
            "top5": round(float((top == truth[:, None]).any(axis=1).mean()), 4),
            "ece": round(expected_calibration_error(probabilities, truth), 4)}


def uncertainty_table(probabilities: np.ndarray, truth: np.ndarray) -> list[dict]:
    """What flagging `uncertain` below each threshold would do: the share flagged, the top-1
    accuracy of the rest, and how many wrong and right answers it catches."""
    correct = probabilities.argmax(axis=1) == truth
    confidence = probabilities.max(axis=1)
    table = []
    for threshold in THRESHOLDS:
        kept = confidence >= threshold
        table.append({
            "threshold": threshold, "flagged_share": round(float(1 - kept.mean()), 4),
            "top1_when_confident": round(float(correct[kept].mean()), 4) if kept.any() else None,
            "wrong_flagged": int((~correct & ~kept).sum()), "right_flagged": int((correct & ~kept).sum()),
        })
    return table


# Candidate methods: (train features, train label indices, test features, number of labels) → (n, C)
# probabilities over every label (zero for a label without training rows).


def training_pca(train: np.ndarray, variance: float = DEFAULT_VARIANCE_TARGET) -> pca.PcaModel:
    """The PCA a refit would fit on these rows (by default at the store's default variance target)."""
    x = train.astype(np.float64)
    return pca.fit_from_moments(len(x), x.sum(axis=0), x.T @ x, variance)


def logistic_regression(train: np.ndarray, labels: np.ndarray, penalty_c: float = classifier.PENALTY_C
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The job's fit (`emr_job.logistic`, here over one block on this machine: the evaluation refits
    once per fold and needs no cluster) → (labels present, weights, intercepts)."""
    present = np.unique(labels)
    solution = logistic.fit_local(classifier.unit_rows(train), np.searchsorted(present, labels), len(present), penalty_c)
    return (present, *logistic.split(solution.theta, len(present)))


def shipped_logits(train: np.ndarray, labels: np.ndarray, test: np.ndarray, count: int) -> np.ndarray:
    """The job's classifier form (`classifier.build`, `Classifier.logits`) with coefficients fitted
    on the training rows; scores before the temperature."""
    present, weights, bias = logistic_regression(train, labels)
    model = classifier.build(present, np.bincount(labels)[present], weights, bias, "evaluation")
    logits = np.full((len(test), count), -np.inf)
    logits[:, present] = model.logits(test)
    return logits


def shipped(train, labels, test, count):
    return classifier.softmax(shipped_logits(train, labels, test, count) / classifier.TEMPERATURE)


def logistic_regression_on_pca(train, labels, test, count, direction: bool = False, penalty_c: float = 0.1):
    """The same probe on the training PCA's coordinates (or their directions, scaled by 10);
    probabilities at temperature 1."""
    projection = training_pca(train)
    x, q = projection.project(train), projection.project(test)
    if direction:
        x, q = 10 * classifier.unit_rows(x), 10 * classifier.unit_rows(q)
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=penalty_c, max_iter=logistic.MAX_ITERATIONS).fit(x, labels)
    probabilities = np.zeros((len(test), count))
    probabilities[:, fitted.classes_] = fitted.predict_proba(q)
    return probabilities


def lda(train, labels, test, count, shrinkage: float = 0.5, temperature: float = 33.5):
    """The previous candidate: shrunk LDA (pooled within-label covariance shrunk halfway to a
    scaled identity) on the training PCA's unit-length coordinates."""
    projection = training_pca(train)
    x, q = classifier.unit_rows(projection.project(train)), classifier.unit_rows(projection.project(test))
    present = np.unique(labels)
    means = np.zeros((count, x.shape[1]))
    means[present] = [x[labels == label].mean(axis=0) for label in present]
    centred = x - means[labels]
    within = centred.T @ centred / (len(x) - len(present))
    shrunk = (1 - shrinkage) * within + shrinkage * np.trace(within) / len(within) * np.eye(len(within))
    weights = np.linalg.solve(shrunk, means[present].T).T
    logits = np.full((len(test), count), -np.inf)
    logits[:, present] = q @ weights.T - 0.5 * (weights * means[present]).sum(axis=1)
    return classifier.softmax(logits / temperature)


def cosine_chunks(train: np.ndarray, test: np.ndarray, rows: int = 1024) -> Iterator[tuple[slice, np.ndarray]]:
    """Cosine similarities of test rows to every training row, a block of test rows at a time."""
    train_unit = classifier.unit_rows(train)
    for start in range(0, len(test), rows):
        block = slice(start, start + rows)
        yield block, classifier.unit_rows(test[block]) @ train_unit.T


def nearest_per_class(train, labels, test, count, temperature: float = 0.05):
    """The previous method: each label's most similar stored photo in PCA space, softmax at 0.05."""
    model = training_pca(train)
    best = np.full((len(test), count), -np.inf)
    for block, similarity in cosine_chunks(model.project(train), model.project(test)):
        for label in np.unique(labels):
            best[block, label] = similarity[:, labels == label].max(axis=1)
    return classifier.softmax(best / temperature)


def knn_votes(train, labels, test, count, k: int = 10):
    """Share of the k most similar stored photos (cosine on raw features) carrying each label."""
    votes = np.zeros((len(test), count))
    for block, similarity in cosine_chunks(train, test):
        nearest = np.argpartition(-similarity, k, axis=1)[:, :k]  # (b, k)
        rows = np.arange(block.start, block.start + len(nearest))
        for column in nearest.T:
            np.add.at(votes, (rows, labels[column]), 1.0 / k)
    return votes


def centroids(train, labels, test, count, temperature: float = 0.05):
    """Cosine to each label's mean unit feature, softmax at 0.05."""
    means = np.zeros((count, train.shape[1]))
    np.add.at(means, labels, classifier.unit_rows(train))
    logits = np.where(np.isin(np.arange(count), labels), classifier.unit_rows(test) @ classifier.unit_rows(means).T, -np.inf)
    return classifier.softmax(logits / temperature)


def centroids_with_spread(train, labels, test, count):
    """An isotropic Gaussian per label on unit features: its own mean and its own spread."""
    x, q = classifier.unit_rows(train), classifier.unit_rows(test)
    logits = np.full((len(test), count), -np.inf)
    for label in np.unique(labels):
        rows = x[labels == label]
        mean = rows.mean(axis=0)
        variance = max(((rows - mean) ** 2).sum(axis=1).mean() / x.shape[1], 1e-12)
        logits[:, label] = -((q - mean) ** 2).sum(axis=1) / (2 * variance) - 0.5 * x.shape[1] * np.log(variance)
    return classifier.softmax(logits)


def ridge(train, labels, test, count, penalty: float = 1.0):
    """One-hot least squares on unit features with an L2 penalty; scores clipped to [0, 1] and normalised."""
    x, q = classifier.unit_rows(train), classifier.unit_rows(test)
    mean = x.mean(axis=0)
    targets = np.eye(count)[labels]
    weights = np.linalg.solve((x - mean).T @ (x - mean) + penalty * np.eye(x.shape[1]), (x - mean).T @ (targets - targets.mean(0)))
    scores = np.clip((q - mean) @ weights + targets.mean(0), 1e-6, None)
    return scores / scores.sum(axis=1, keepdims=True)


def knn_and_shipped(train, labels, test, count):
    """The mean of the shipped classifier's probabilities and the k = 10 votes (one scan of the
    store per photo: k-NN's cost, for comparison)."""
    return 0.5 * (shipped(train, labels, test, count) + knn_votes(train, labels, test, count))


METHODS: dict[str, Method] = {
    SHIPPED: shipped,
    "nearest-per-class/pca (previous)": nearest_per_class,
    "k-NN k=10/cosine": knn_votes,
    "centroids/l2": centroids,
    "centroids+spread/l2": centroids_with_spread,
    "ridge/l2": ridge,
    "lda/pca-direction shrinkage 0.5": lda,
    "logistic-regression/pca C=0.1": logistic_regression_on_pca,
    "logistic-regression/pca-direction C=1": lambda *rows: logistic_regression_on_pca(*rows, direction=True, penalty_c=1.0),
    "logistic-regression + k-NN": knn_and_shipped,
}


def evaluate(features: np.ndarray, labels: np.ndarray, image_keys: np.ndarray, splits=SPLITS,
             methods=tuple(METHODS)) -> dict:
    """Every method on every split (one row each), the temperature each session split would choose
    for the shipped classifier, and the shipped classifier's uncertainty table on each split."""
    import time

    names, index = np.unique(labels, return_inverse=True)
    table, uncertain, calibration = [], {}, {}
    for split in splits:
        folds = [(train, test) for train, test in split_folds(split, labels, image_keys) if test.any()]
        if not folds:
            raise ValueError(f"the {split} split holds out no photos: are the file names Fruits-360's?")
        truth = np.concatenate([index[test] for _, test in folds])
        session_split = split in ("series", "loso")
        if SHIPPED in methods or session_split:  # one fit per fold serves the row and the calibration
            started = time.perf_counter()
            logits = np.vstack([shipped_logits(features[train], index[train], features[test], len(names))
                                for train, test in folds])
            fit_seconds = time.perf_counter() - started
        for name in methods:
            started = time.perf_counter()
            if name == SHIPPED:
                probabilities = classifier.softmax(logits / classifier.TEMPERATURE)
                uncertain[split] = uncertainty_table(probabilities, truth)
            else:
                probabilities = np.vstack([METHODS[name](features[train], index[train], features[test], len(names))
                                           for train, test in folds])
            seconds = time.perf_counter() - started + (fit_seconds if name == SHIPPED else 0.0)
            table.append({"split": split, "method": name, "folds": len(folds), "test": len(truth),
                          **figures(probabilities, truth), "seconds": round(seconds, 1)})
        if session_split:
            chosen = best_temperature(logits, truth)
            calibration[split] = {
                "shipped_temperature": classifier.TEMPERATURE, "best_temperature": round(chosen, 4),
                "ece_at_best": round(expected_calibration_error(classifier.softmax(logits / chosen), truth), 4)}
    return {"labels": len(names), "photos": len(labels), "table": table, "calibration": calibration,
            "uncertain_thresholds": uncertain}


def render_table(rows: list[dict]) -> str:
    """The comparison as aligned text, one line per (split, method)."""
    lines = [f"{'split':<7} {'method':<34} {'test':>6} {'top1':>7} {'top5':>7} {'ece':>7} {'s':>6}"]
    lines += [f"{r['split']:<7} {r['method']:<34} {r['test']:>6} {r['top1']:>7.4f} {r['top5']:>7.4f} "
              f"{r['ece']:>7.4f} {r['seconds']:>6.1f}" for r in rows]
    return "\n".join(lines)
