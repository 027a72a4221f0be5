"""`verger bench`: the notebook baseline and Verger's job on the same images, side by side.

Both run as child processes, one after the other, on the same folder and weights, so their ratio
is measured under the same machine load. Each child's process tree (JVM, driver Python, Python
workers) is sampled for peak resident memory.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from emr_job.folders import list_image_keys, sample

BASELINE_LINE = re.compile(r"baseline-notebook: (\d+) images in ([\d.]+) s = ([\d.]+) img/s")
INCREMENTAL_IMAGES = 100


@dataclass
class PeakMemory:
    """Peak resident memory (MiB) of a process tree, split into driver side and Python workers."""

    driver_mib: float = 0.0
    workers_mib: float = 0.0
    samples: int = 0


@dataclass
class Run:
    images: int
    seconds: float
    memory: PeakMemory
    report: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def run_sampled(command: list[str], env: dict[str, str], interval: float = 0.25) -> tuple[str, PeakMemory]:
    """Run a command to completion, sampling its process tree's memory; raise with stderr on failure."""
    memory = PeakMemory()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample_tree() -> None:
        root = psutil.Process(process.pid)
        while not done.wait(interval):
            try:
                tree = [root, *root.children(recursive=True)]
                driver = workers = 0
                for child in tree:
                    rss = child.memory_info().rss
                    if is_python_worker(child):
                        workers += rss
                    else:
                        driver += rss
            except psutil.Error:
                continue
            memory.driver_mib = max(memory.driver_mib, driver / 2**20)
            memory.workers_mib = max(memory.workers_mib, workers / 2**20)
            memory.samples += 1

    sampler = threading.Thread(target=sample_tree, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} … failed ({process.returncode}):\n{stderr[-3000:]}")
    return stdout, memory


def is_python_worker(process: psutil.Process) -> bool:
    """PySpark's daemon and the workers it forks (the driver's own Python is not one)."""
    try:
        return any("pyspark.daemon" in part or "pyspark/daemon.py" in part for part in process.cmdline()) or (
            process.parent() is not None and is_daemon(process.parent())
        )
    except psutil.Error:
        return False


def is_daemon(process: psutil.Process) -> bool:
    try:
        return any("pyspark.daemon" in part for part in process.cmdline())
    except psutil.Error:
        return False


def link_images(images_dir: str, keys: list[str], into: Path) -> None:
    """A folder of hard links (copies across file systems), so both jobs read exactly these images;
    not symbolic links, which a local source refuses when they lead outside its folder."""
    for key in keys:
        target = into / key
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(os.path.join(images_dir, key), target)
        except OSError:
            shutil.copyfile(os.path.join(images_dir, key), target)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_baseline(script: str, images: Path, weights: str, out: Path) -> Run:
    stdout, memory = run_sampled([sys.executable, script, str(images), str(out), weights], child_env())
    match = BASELINE_LINE.search(stdout)
    if match is None:
        raise RuntimeError(f"the baseline printed no throughput line:\n{stdout[-2000:]}")
    return Run(images=int(match.group(1)), seconds=float(match.group(2)), memory=memory)


def run_verger(images: Path, warehouse: Path, weights: str, engine: str) -> Run:
    command = [sys.executable, "-m", "verger.cli", "run", "--images", str(images), "--warehouse",
               str(warehouse), "--weights", weights, "--engine", engine]
    stdout, memory = run_sampled(command, child_env())
    report = json.loads(stdout[stdout.index("{"):])
    processed = report["images"]["new"] + report["images"]["quarantined"]
    return Run(images=processed, seconds=report["seconds"]["total"], memory=memory, report=report)


def bench(images_dir: str, weights: str, baseline_script: str, limit: int | None, engine: str,
          workdir: str | None = None) -> list[str]:
    """Run everything and return the lines to print; the last one is the ratio."""
    keys = sample(list_image_keys(os.path.abspath(images_dir)), limit)
    if len(keys) <= INCREMENTAL_IMAGES:
        raise ValueError(f"the benchmark needs more than {INCREMENTAL_IMAGES} images, got {len(keys)}")
    held_back = keys[:: max(1, len(keys) // INCREMENTAL_IMAGES)][:INCREMENTAL_IMAGES]
    main_keys = sorted(set(keys) - set(held_back))
    root = Path(tempfile.mkdtemp(prefix="verger-bench-", dir=workdir))
    try:
        link_images(images_dir, main_keys, root / "images")
        link_images(images_dir, held_back, root / "new-images")
        baseline = run_baseline(baseline_script, root / "images", weights, root / "baseline-out")
        verger = run_verger(root / "images", root / "warehouse", weights, engine)
        into_empty = run_verger(root / "new-images", root / "empty-warehouse", weights, engine)
        into_full = run_verger(root / "new-images", root / "warehouse", weights, engine)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    seconds = verger.report["seconds"]
    lines = [
        f"images: {len(main_keys)} (+{len(held_back)} held back for the incremental runs), engine {engine}",
        f"baseline notebook : {baseline.images_per_second:7.1f} img/s  ({baseline.images} in {baseline.seconds:.1f} s)"
        f"  peak memory driver {baseline.memory.driver_mib:,.0f} MiB, Python workers {baseline.memory.workers_mib:,.0f} MiB",
        f"verger job        : {verger.images_per_second:7.1f} img/s  ({verger.images} in {verger.seconds:.1f} s)"
        f"  peak memory driver {verger.memory.driver_mib:,.0f} MiB, Python workers {verger.memory.workers_mib:,.0f} MiB",
        "verger stages (task-seconds summed over workers): "
        f"fetch {seconds['fetch_task_s']:.1f}, decode {seconds['decode_task_s']:.1f}, "
        f"inference {seconds['inference_task_s']:.1f}; wall: extract {seconds['extract_wall']:.1f}, "
        f"write+commit {seconds['write_and_commit']:.1f}, pca {seconds['pca']:.1f}",
        f"incremental {INCREMENTAL_IMAGES} images: into an empty store {into_empty.seconds:.1f} s, "
        f"into the {len(main_keys)}-image store {into_full.seconds:.1f} s "
        f"(ratio {into_full.seconds / into_empty.seconds:.2f}; "
        f"PCA {into_empty.report['pca']['action']} vs {into_full.report['pca']['action']}, "
        f"{into_full.report['seconds']['pca']:.1f} s in PCA into the store)",
        f"ratio verger/baseline: {verger.images_per_second / baseline.images_per_second:.2f}x",
    ]
    return lines
