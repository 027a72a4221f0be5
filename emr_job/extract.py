"""The per-partition work: fetch → decode → batched inference, with no Spark in sight.

`extract_frame` is a pure pandas-in, pandas-out function so that it can be tested with a fake
extractor; the Spark job only wires it into `mapInPandas`.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from contract.layout import FEATURE_DIM, INPUT_SIZE
from emr_job.fetch import fetch_all
from emr_job.images import Rejected, preprocess

Extractor = Callable[[np.ndarray], np.ndarray]

OUTPUT_SCHEMA = (
    "image_key string, etag string, label string, features array<float>, reason string, "
    "detail string, "
    "fetch_s double, decode_s double, infer_s double"
)
DECODE_THREADS = 2


def extract_frame(frame: pd.DataFrame, source: str, extractor: Extractor, batch_size: int) -> pd.DataFrame:
    """Features for every row of `frame` (image_key, etag, label), or the reason there are none.

    Decoding runs in a small thread pool ahead of inference (Pillow and the inference engines
    release the GIL), so the two overlap. Timings are split evenly over the rows they cover, so
    summing a column over the batch gives that stage's task-seconds.

    Examples
    --------
    >>> fake = lambda x: np.ones((len(x), 1280), np.float32)
    >>> out = extract_frame(pd.DataFrame({"image_key": ["a.jpg"], "etag": ["e"]}), "file:///nowhere", fake, 8)
    >>> out.loc[0, "reason"], out.loc[0, "features"] is None
    ('missing', True)
    """
    rows = len(frame)
    started = time.perf_counter()
    fetched = list(fetch_all(source, frame["image_key"], frame["etag"]))
    fetch_s = (time.perf_counter() - started) / max(rows, 1)

    features: list[np.ndarray | None] = [None] * rows
    reasons: list[str | None] = [None] * rows
    details: list[str | None] = [None] * rows
    decode_s = np.zeros(rows)
    infer_s = np.zeros(rows)

    def decode(index: int) -> tuple[int, np.ndarray | Rejected]:
        began = time.perf_counter()
        content = fetched[index].content
        result = content if isinstance(content, Rejected) else preprocess(content)
        decode_s[index] = time.perf_counter() - began
        return index, result

    pending: list[tuple[int, np.ndarray]] = []

    def infer() -> None:
        batch = np.stack([pixels for _, pixels in pending])  # (n, 224, 224, 3) float32
        began = time.perf_counter()
        vectors = check_output(extractor(batch), len(pending))  # (n, 1280) float32
        elapsed = (time.perf_counter() - began) / len(pending)
        for (index, _), vector in zip(pending, vectors):
            features[index] = vector
            infer_s[index] = elapsed
        pending.clear()

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for index, result in pool.map(decode, range(rows)):
            if isinstance(result, Rejected):
                reasons[index], details[index] = result.reason, result.detail
                continue
            pending.append((index, result))
            if len(pending) == batch_size:
                infer()
        if pending:
            infer()

    return pd.DataFrame(
        {
            "image_key": frame["image_key"].to_numpy(),
            "etag": frame["etag"].to_numpy(),
            "label": frame["label"].to_numpy() if "label" in frame else np.full(rows, None),
            "features": features,
            "reason": reasons,
            "detail": details,
            "fetch_s": np.full(rows, fetch_s),
            "decode_s": decode_s,
            "infer_s": infer_s,
        }
    )


def check_output(vectors: np.ndarray, expected_rows: int) -> np.ndarray:
    """The engine must return float32 (n, 1280) with finite values; say what it returned otherwise."""
    vectors = np.asarray(vectors)
    if vectors.shape != (expected_rows, FEATURE_DIM):
        raise ValueError(
            f"extractor returned shape {vectors.shape}, expected ({expected_rows}, {FEATURE_DIM}) "
            f"for a batch of {expected_rows} images of {INPUT_SIZE}x{INPUT_SIZE}x3"
        )
    if not np.isfinite(vectors).all():
        raise ValueError("extractor returned non-finite features (NaN or inf)")
    return vectors.astype(np.float32, copy=False)


def extract_partitions(
    source: str, load_extractor: Callable[[], Extractor], batch_size: int
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The `mapInPandas` function; the extractor is loaded (or fetched from the worker's cache) once
    per task, not once per Arrow batch, in the background while the first photos are fetched and
    decoded, so a fresh worker's model load overlaps its first batch instead of preceding it."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        with ThreadPoolExecutor(1) as loader:
            loaded = loader.submit(load_extractor)

            def extractor(images: np.ndarray) -> np.ndarray:
                return loaded.result()(images)

            for frame in frames:
                yield extract_frame(frame, source, extractor, batch_size)
            loaded.result()  # a model that failed to load fails the task even if no photo needed it

    return run
