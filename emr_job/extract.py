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
from emr_job.fetch import CONCURRENT_GETS, MAX_OBJECT_BYTES, fetch_all
from emr_job.images import MAX_DECODE_BYTES, Rejected, preprocess

Extractor = Callable[[np.ndarray], np.ndarray]

OUTPUT_SCHEMA = (
    "image_key string, etag string, label string, features array<float>, reason string, "
    "detail string, "
    "fetch_s double, decode_s double, infer_s double"
)
DECODE_THREADS = 2
# Photos are fetched a window at a time, so a task holds at most this many fetched bytes (plus one
# photo at the limit); with DECODE_THREADS decodes of at most MAX_DECODE_BYTES each, a Python
# worker's memory for images is bounded by FETCH_WINDOW_BYTES + DECODE_THREADS * MAX_DECODE_BYTES.
FETCH_WINDOW_ROWS = 2 * CONCURRENT_GETS
FETCH_WINDOW_BYTES = 256 * 1024 * 1024
WORKER_IMAGE_BUDGET = FETCH_WINDOW_BYTES + DECODE_THREADS * MAX_DECODE_BYTES


def extract_frame(frame: pd.DataFrame, source: str, extractor: Extractor, batch_size: int) -> pd.DataFrame:
    """Features for every row of `frame` (image_key, etag, label, optional size), or the reason
    there are none.

    Photos are fetched one window at a time (`fetch_windows`), which bounds the bytes a task holds.
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
    keys, etags = frame["image_key"].tolist(), frame["etag"].tolist()
    sizes = [None if pd.isna(size) else int(size) for size in frame["size"]] if "size" in frame else [None] * rows
    fetch_s = np.zeros(rows)
    features: list[np.ndarray | None] = [None] * rows
    reasons: list[str | None] = [None] * rows
    details: list[str | None] = [None] * rows
    decode_s = np.zeros(rows)
    infer_s = np.zeros(rows)

    def decode(index: int, content: bytes | Rejected) -> tuple[int, np.ndarray | Rejected]:
        began = time.perf_counter()
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
        for window in fetch_windows(sizes):
            began = time.perf_counter()
            fetched = [item.content for item in fetch_all(source, keys[window], etags[window], sizes[window])]
            fetch_s[window] = (time.perf_counter() - began) / len(fetched)
            for index, result in pool.map(decode, range(window.start, window.stop), fetched):
                if isinstance(result, Rejected):
                    reasons[index], details[index] = result.reason, result.detail
                    continue
                pending.append((index, result))
                if len(pending) == batch_size:
                    infer()
            del fetched
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
            "fetch_s": fetch_s,
            "decode_s": decode_s,
            "infer_s": infer_s,
        }
    )


def fetch_windows(sizes: list[int | None], max_rows: int = FETCH_WINDOW_ROWS,
                  max_bytes: int = FETCH_WINDOW_BYTES) -> Iterator[slice]:
    """Consecutive row slices of at most `max_rows` rows and `max_bytes` declared bytes (an unknown
    size counts as the largest photo accepted; one over the limit as nothing, it is never read).

    Examples
    --------
    >>> [(w.start, w.stop) for w in fetch_windows([40, 40, 40, 10**12, None], max_rows=3, max_bytes=100)]
    [(0, 2), (2, 4), (4, 5)]
    """
    start, total = 0, 0
    for index, size in enumerate(sizes):
        cost = MAX_OBJECT_BYTES if size is None else size if size <= MAX_OBJECT_BYTES else 0
        if index > start and (index - start == max_rows or total + cost > max_bytes):
            yield slice(start, index)
            start, total = index, 0
        total += cost
    if start < len(sizes):
        yield slice(start, len(sizes))


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
