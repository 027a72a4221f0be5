"""`verger bench`: what users pay, on the same images, in one run.

The notebook baseline, the single-process reference (`verger.reference`: the ceiling of this
design) and Verger's job at three sizes — the whole folder and a 2,000-photo first batch, each into
an empty store, then 100 held-back photos into the whole-folder store — run as child processes one
after the other, so their ratios are measured under the same machine load. Each child's process
tree (JVM, driver Python, Python workers) is sampled for peak resident memory.

Fixed cost is what does not grow with the photo count (start-up of the Python workers, model load,
commits, PCA). It is derived from the two first batches: their difference gives the marginal
seconds per photo, and a run's fixed cost is its seconds minus its photos times that.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from emr_job.engines.precision import PrecisionChoice, choose_here, cpu_flags
from emr_job.folders import list_image_keys
from verger import bench_quality

BASELINE_LINE = re.compile(r"baseline-notebook: (\d+) images in ([\d.]+) s = ([\d.]+) img/s")
REFERENCE_PATTERN = re.compile(r"reference: (\d+) images in ([\d.]+) s \(model load ([\d.]+) s\)")
INCREMENTAL_IMAGES = 100
FIRST_BATCH_IMAGES = 2000
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# The targets, checked on the run's own figures.
FIRST_BATCH_TARGET = 3.0
WHOLE_TARGET, WHOLE_STRETCH = 3.0, 3.5
REFERENCE_SHARE_TARGET = 0.95
INCREMENTAL_FIXED_TARGET_S = 5.0
BF16_WHOLE_TARGET = 5.0
TOP1_TOLERANCE = 0.01
K_TOLERANCE = 0.05


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

    def fixed_seconds(self, per_photo: float) -> float:
        return self.seconds - self.images * per_photo


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
        parent = process.parent()
    except psutil.Error:
        return False
    return is_daemon(process) or (parent is not None and is_daemon(parent))


def is_daemon(process: psutil.Process) -> bool:
    try:
        return any("pyspark.daemon" in part or "pyspark/daemon.py" in part for part in process.cmdline())
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


def run_reference(images: Path, weights: str, engine: str, precision: str, int8_model: str | None
                  ) -> tuple[Run, float]:
    """The single-process reference's run, and its model load seconds (its fixed cost)."""
    command = [sys.executable, "-m", "verger.reference", str(images), weights, engine, precision,
               *([int8_model] if int8_model else [])]
    stdout, memory = run_sampled(command, child_env())
    match = REFERENCE_PATTERN.search(stdout)
    if match is None:
        raise RuntimeError(f"the reference printed no throughput line:\n{stdout[-2000:]}")
    return Run(images=int(match.group(1)), seconds=float(match.group(2)), memory=memory), float(match.group(3))


def run_verger(images: Path, warehouse: Path, weights: str, engine: str, precision: str, int8_model: str | None
               ) -> Run:
    command = [sys.executable, "-m", "verger.cli", "run", "--images", str(images), "--warehouse",
               str(warehouse), "--weights", weights, "--engine", engine, "--precision", precision,
               *(["--int8-model", int8_model] if int8_model else [])]
    stdout, memory = run_sampled(command, child_env())
    report = json.loads(stdout[stdout.index("{"):])
    processed = report["images"]["new"] + report["images"]["quarantined"]
    return Run(images=processed, seconds=report["seconds"]["total"], memory=memory, report=report)


def spread(keys: list[str], count: int | None) -> list[str]:
    """`count` keys evenly spaced through the sorted list: every label and every capture series
    (plain and r_ rotations) keeps its share, unlike taking the first names of each folder.

    Examples
    --------
    >>> spread([f"A/{n}.jpg" for n in range(6)] + ["B/r_1.jpg", "B/r_2.jpg"], 4)
    ['A/0.jpg', 'A/2.jpg', 'A/4.jpg', 'B/r_1.jpg']
    """
    if count is None or count >= len(keys):
        return list(keys)
    step = len(keys) / count
    return [keys[int(index * step)] for index in range(count)]


@dataclass
class Measured:
    """Everything one bench run measured, for `summary`."""

    engine: str
    precision: PrecisionChoice
    baseline: Run
    reference: Run
    reference_load_s: float
    first: Run
    whole: Run
    incremental: Run
    cosine: tuple[float, float]  # mean and min, Verger's features vs the baseline's FP32 ones
    quantize_s: float  # making the int8 model (0 at another precision): once per store, not in any run
    fp32_quality: bench_quality.Quality
    verger_quality: bench_quality.Quality


def bench(images_dir: str, weights: str, baseline_script: str, limit: int | None, engine: str,
          precision: str = "fp32", workdir: str | None = None, variance: float = 0.95) -> list[str]:
    """Run everything and return the lines to print; the last one is the whole-folder ratio."""
    choice = choose_here(precision)
    keys = spread(list_image_keys(os.path.abspath(images_dir)), limit)
    if len(keys) <= 3 * INCREMENTAL_IMAGES:
        raise ValueError(f"the benchmark needs more than {3 * INCREMENTAL_IMAGES} images, got {len(keys)}")
    held_back = spread(keys, INCREMENTAL_IMAGES)
    main_keys = sorted(set(keys) - set(held_back))
    first_keys = spread(main_keys, min(FIRST_BATCH_IMAGES, len(main_keys) // 2))
    root = Path(tempfile.mkdtemp(prefix="verger-bench-", dir=workdir))
    try:
        link_images(images_dir, main_keys, root / "images")
        link_images(images_dir, first_keys, root / "first-images")
        link_images(images_dir, held_back, root / "new-images")
        int8_model, quantize_s = int8_model_for(choice.precision, root, weights)
        baseline = run_baseline(baseline_script, root / "images", weights, root / "baseline-out")
        reference, load_s = run_reference(root / "images", weights, engine, choice.precision, int8_model)
        whole = run_verger(root / "images", root / "warehouse", weights, engine, choice.precision, int8_model)
        fp32 = bench_quality.baseline_features(str(root / "baseline-out"), str(root / "images"))
        ours = bench_quality.verger_features(str(root / "warehouse"))
        first = run_verger(root / "first-images", root / "first-warehouse", weights, engine, choice.precision,
                           int8_model)
        incremental = run_verger(root / "new-images", root / "warehouse", weights, engine, choice.precision,
                                 int8_model)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    common = sorted(set(fp32) & set(ours))
    reference_features = np.stack([fp32[key] for key in common])
    verger_features = np.stack([ours[key] for key in common])
    similarity = bench_quality.cosines(reference_features, verger_features)
    return summary(Measured(
        engine=engine, precision=choice, baseline=baseline, reference=reference, reference_load_s=load_s,
        first=first, whole=whole, incremental=incremental, quantize_s=quantize_s,
        cosine=(float(similarity.mean()), float(similarity.min())),
        fp32_quality=bench_quality.quality(common, reference_features, variance),
        verger_quality=bench_quality.quality(common, verger_features, variance),
    ))


def int8_model_for(precision: str, root: Path, weights: str) -> tuple[str | None, float]:
    """For int8: the model quantized on the whole folder's plain series (`verger.quantize`), and
    the seconds it took."""
    if precision != "int8":
        return None, 0.0
    from verger.quantize import quantize

    began = time.perf_counter()
    model = quantize(str(root / "images"), weights, str(root / "int8"))
    return model.folder, time.perf_counter() - began


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def summary(m: Measured) -> list[str]:
    """The table, the quality check, the targets; the last line is the whole-folder ratio."""
    per_photo = (m.whole.seconds - m.first.seconds) / max(m.whole.images - m.first.images, 1)
    base_rate = m.baseline.images_per_second
    flags = sorted(flag for flag in SHOWN_FLAGS if flag in cpu_flags())
    stages = m.whole.report["seconds"]

    def row(name: str, run: Run, fixed: float | None) -> str:
        fixed_text = f"{fixed:8.1f}" if fixed is not None else f"{'-':>8}"
        photo_ms = 1000 * (run.seconds - fixed) / run.images if fixed is not None else 1000 * run.seconds / run.images
        return (f"{name:<34}{run.images:>7}{run.seconds:>9.1f}{run.images_per_second:>9.1f}{fixed_text}"
                f"{photo_ms:>10.2f}{run.images_per_second / base_rate:>8.2f}x")

    incremental_fixed = m.incremental.fixed_seconds(per_photo)
    whole_ratio = m.whole.images_per_second / base_rate
    first_ratio = m.first.images_per_second / base_rate
    reference_share = m.whole.images_per_second / m.reference.images_per_second
    top1_drop = m.fp32_quality.top1 - m.verger_quality.top1
    k_change = abs(m.verger_quality.k - m.fp32_quality.k) / m.fp32_quality.k
    lines = [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores, flags {' '.join(flags) or 'none of ' + ', '.join(SHOWN_FLAGS)}",
        f"engine {m.engine}, precision {m.precision.precision} ({m.precision.reason})",
        *([f"int8 model quantized on the folder's plain series in {m.quantize_s:.1f} s (once per store; "
           "in no run's time)"] if m.precision.precision == "int8" else []),
        f"{'':<34}{'photos':>7}{'seconds':>9}{'img/s':>9}{'fixed s':>8}{'ms/photo':>10}{'vs base':>9}",
        row("baseline notebook (Keras)", m.baseline, None),
        row("reference: one process, no Spark", m.reference, m.reference_load_s),
        row(f"verger incremental {m.incremental.images} into store", m.incremental, incremental_fixed),
        row(f"verger first batch {m.first.images}", m.first, m.first.fixed_seconds(per_photo)),
        row(f"verger whole folder {m.whole.images}", m.whole, m.whole.fixed_seconds(per_photo)),
        "(fixed s: verger = seconds - photos x the marginal per-photo cost between the two first batches; "
        "reference = model load; JVM start excluded for every Spark run)",
        f"peak memory (driver / Python workers): baseline {m.baseline.memory.driver_mib:,.0f} / "
        f"{m.baseline.memory.workers_mib:,.0f} MiB, verger whole folder {m.whole.memory.driver_mib:,.0f} / "
        f"{m.whole.memory.workers_mib:,.0f} MiB, reference {m.reference.memory.driver_mib:,.0f} MiB",
        "verger whole folder, stages (task-seconds over workers): "
        f"fetch {stages['fetch_task_s']:.1f}, decode {stages['decode_task_s']:.1f}, "
        f"inference {stages['inference_task_s']:.1f}; wall: extract {stages['extract_wall']:.1f}, "
        f"write+commit {stages['write_and_commit']:.1f}, pca {stages['pca']:.1f}",
        f"verger incremental, wall: {stage_walls(m.incremental.report)}",
        f"quality vs the baseline's FP32 features ({m.verger_quality.test} held-out r_-series photos): "
        f"cosine mean {m.cosine[0]:.5f} min {m.cosine[1]:.5f}; series top-1 FP32 {m.fp32_quality.top1:.4f}, "
        f"verger {m.precision.precision} {m.verger_quality.top1:.4f} ({-100 * top1_drop:+.2f} points); "
        f"PCA k FP32 {m.fp32_quality.k}, verger {m.verger_quality.k} ({100 * k_change:.1f} %)",
        "targets: " + "; ".join([
            verdict(f"incremental fixed cost {incremental_fixed:.1f} s <= {INCREMENTAL_FIXED_TARGET_S:.0f} s",
                    incremental_fixed <= INCREMENTAL_FIXED_TARGET_S),
            verdict(f"first batch {first_ratio:.2f}x >= {FIRST_BATCH_TARGET:.0f}x", first_ratio >= FIRST_BATCH_TARGET),
            verdict(f"whole folder {whole_ratio:.2f}x >= {WHOLE_TARGET:.0f}x (stretch {WHOLE_STRETCH}x: "
                    f"{'met' if whole_ratio >= WHOLE_STRETCH else 'not met'})", whole_ratio >= WHOLE_TARGET),
            verdict(f"whole folder {reference_share:.2f} of the reference >= {REFERENCE_SHARE_TARGET}",
                    reference_share >= REFERENCE_SHARE_TARGET),
            *([verdict(f"bf16 whole folder {whole_ratio:.2f}x >= {BF16_WHOLE_TARGET:.0f}x",
                       whole_ratio >= BF16_WHOLE_TARGET)] if m.precision.precision == "bf16" else []),
            *([verdict(f"top-1 within {100 * TOP1_TOLERANCE:.0f} point", top1_drop <= TOP1_TOLERANCE),
               verdict(f"PCA k within {100 * K_TOLERANCE:.0f} %", k_change <= K_TOLERANCE)]
              if m.precision.precision != "fp32" else []),
        ]),
        f"ratio verger/baseline: {whole_ratio:.2f}x",
    ]
    return lines


def stage_walls(report: dict) -> str:
    """Where a batch's seconds went: extraction, write + commit, PCA, and the rest (store reads,
    report); all of it is fixed cost for a small batch."""
    seconds = report["seconds"]
    walls = {"extract": seconds.get("extract_wall", 0.0), "write+commit": seconds.get("write_and_commit", 0.0),
             f"PCA {report['pca']['action']}": seconds.get("pca", 0.0)}
    walls["rest"] = seconds["total"] - sum(walls.values())
    return ", ".join(f"{name} {value:.1f} s" for name, value in walls.items())


def verdict(text: str, met: bool) -> str:
    return f"{text} {'MET' if met else 'NOT MET'}"
