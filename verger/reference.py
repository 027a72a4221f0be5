"""The single-process reference of `verger bench`: the ceiling of Verger's design on this machine.

Decode (the job's own `preprocess`, in a thread pool) and the job's engine (one extractor using
every core), in one Python process: no Spark, no store, no PCA. Verger's job can approach this
rate but not pass it, so the ratio of the two is what the job's distribution costs.

usage: python -m verger.reference IMAGES_DIR WEIGHTS ENGINE PRECISION
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from emr_job.engines import load_extractor
from emr_job.folders import list_image_keys
from emr_job.images import Rejected, preprocess
from emr_job.settings import JobSettings

BATCH = JobSettings.batch_size  # the job's inference batch
AHEAD = 4 * BATCH
LINE = "reference: {images} images in {seconds:.1f} s (model load {load:.1f} s) = {rate:.1f} img/s"


def decode(path: str) -> np.ndarray | None:
    with open(path, "rb") as file:
        pixels = preprocess(file.read())
    return None if isinstance(pixels, Rejected) else pixels


def decoded_ahead(pool: ThreadPoolExecutor, paths: list[str]) -> Iterator[np.ndarray | None]:
    """Decoded photos in order, at most AHEAD decodes in flight, so memory stays bounded."""
    window: deque = deque()
    for path in paths:
        window.append(pool.submit(decode, path))
        if len(window) > AHEAD:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


def run(images_dir: str, weights: str, engine: str, precision: str, int8_model: str | None = None) -> str:
    paths = [os.path.join(images_dir, key) for key in list_image_keys(images_dir)]
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    extractor = load_extractor(weights, engine, threads=cores, precision=precision, int8_model=int8_model)
    load_seconds = time.perf_counter() - started
    done = 0
    batch: list[np.ndarray] = []
    with ThreadPoolExecutor(cores) as pool:
        for pixels in decoded_ahead(pool, paths):
            if pixels is not None:
                batch.append(pixels)
            if len(batch) == BATCH:
                done += len(extractor(np.stack(batch)))
                batch.clear()
        if batch:
            done += len(extractor(np.stack(batch)))
    seconds = time.perf_counter() - started
    return LINE.format(images=done, seconds=seconds, load=load_seconds, rate=done / seconds)


if __name__ == "__main__":
    print(run(*sys.argv[1:6]), flush=True)
