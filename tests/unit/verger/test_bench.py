"""The benchmark's plumbing: memory sampling, image links, sampling, the quality check, the summary."""
import re
import sys

import numpy as np
import pytest

from emr_job.engines.precision import PrecisionChoice
from verger import bench_quality
from verger.bench import BASELINE_LINE, Measured, PeakMemory, Run, link_images, run_sampled, spread, summary


def test_run_sampled_reports_the_peak_memory_of_the_child_tree():
    # GIVEN a child that holds ~200 MiB for a moment
    code = "import time; block = bytearray(200 * 2**20); time.sleep(1.0)"
    # WHEN it runs under the sampler
    _, memory = run_sampled([sys.executable, "-c", code], env={}, interval=0.05)
    # THEN the peak is seen, and counted on the driver side (it is no PySpark worker)
    assert memory.samples > 0
    assert memory.driver_mib >= 200 and memory.workers_mib == 0


def test_a_failing_child_raises_with_its_stderr():
    with pytest.raises(RuntimeError, match="boom"):
        run_sampled([sys.executable, "-c", "import sys; sys.exit('boom')"], env={})


def test_link_images_mirrors_the_label_folders(tmp_path):
    (tmp_path / "src" / "Kiwi").mkdir(parents=True)
    (tmp_path / "src" / "Kiwi" / "1.jpg").write_bytes(b"x")
    link_images(str(tmp_path / "src"), ["Kiwi/1.jpg"], tmp_path / "links")
    assert (tmp_path / "links" / "Kiwi" / "1.jpg").read_bytes() == b"x"
    assert not (tmp_path / "links" / "Kiwi" / "1.jpg").is_symlink()


def test_the_baseline_throughput_line_is_parsed():
    match = BASELINE_LINE.search("noise\nbaseline-notebook: 300 images in 6.0 s = 50.0 img/s\n")
    assert match.groups() == ("300", "6.0", "50.0")


def fruits_like_features(seed: int = 0, labels: int = 4, per_series: int = 30):
    """Keys named like Fruits-360 (plain and r_ series per label) and features clustered by label."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels, 64)) * 4
    keys, rows = [], []
    for label in range(labels):
        for series in ("", "r_"):
            for frame in range(per_series):
                keys.append(f"Fruit{label}/{series}{frame}_100.jpg")
                rows.append(centres[label] + rng.normal(size=64))
    return keys, np.abs(np.array(rows, np.float32))


def test_quality_trains_on_plain_series_and_tests_on_r_series():
    # GIVEN well-separated labels, each with a plain and an r_ capture series
    keys, features = fruits_like_features()
    # WHEN the bench's quality check runs
    measured = bench_quality.quality(keys, features, 0.95)
    # THEN only the r_ photos are held out, and they are labelled right
    assert measured.test == len(keys) // 2
    assert measured.top1 == 1.0 and 1 <= measured.k < 64


def test_quality_sees_labels_swapped_in_the_held_out_series():
    # GIVEN the same photos but the r_ series' features of two labels swapped (a broken engine)
    keys, features = fruits_like_features()
    swapped = features.copy()
    r0 = [i for i, key in enumerate(keys) if key.startswith("Fruit0/r_")]
    r1 = [i for i, key in enumerate(keys) if key.startswith("Fruit1/r_")]
    swapped[r0], swapped[r1] = features[r1], features[r0]
    # WHEN the quality check runs THEN the accuracy drops by those two labels' share
    assert bench_quality.quality(keys, swapped, 0.95).top1 == pytest.approx(0.5)


def test_quality_needs_both_series():
    keys, features = fruits_like_features()
    plain = [i for i, key in enumerate(keys) if "/r_" not in key]
    with pytest.raises(ValueError, match="plain and r_ series"):
        bench_quality.quality([keys[i] for i in plain], features[plain], 0.95)


def test_spread_keeps_every_label_and_series_in_a_sample():
    # GIVEN a folder whose plain frames sort before its r_ frames
    keys, _ = fruits_like_features(per_series=50)
    # WHEN a tenth is sampled THEN every label keeps plain and r_ photos
    sampled = spread(sorted(keys), len(keys) // 10)
    assert len(sampled) == len(keys) // 10
    assert {(key.split("/")[0], "/r_" in key) for key in sampled} == {
        (f"Fruit{label}", rotated) for label in range(4) for rotated in (False, True)}


def run(images: int, seconds: float, stages: dict | None = None, pca_action: str = "refit") -> Run:
    report = {"seconds": {**(stages or {}), "pca": 6, "total": seconds}, "pca": {"action": pca_action}}
    return Run(images=images, seconds=seconds, memory=PeakMemory(100, 200, 3), report=report)


def test_summary_derives_fixed_cost_from_the_two_first_batches_and_ends_with_the_ratio():
    # GIVEN runs where each photo costs 10 ms after a fixed 4 s (first batches) and 3 s (incremental)
    stages = {"fetch_task_s": 1, "decode_task_s": 2, "inference_task_s": 3, "extract_wall": 4,
              "write_and_commit": 5, "pca": 6}
    quality = bench_quality.Quality(top1=0.9, k=100, test=10)
    measured = Measured(
        engine="openvino", precision=PrecisionChoice("bf16", "forced"),
        baseline=run(10000, 200.0), reference=run(10000, 40.0), reference_load_s=1.0,
        first=run(2000, 24.0, stages), whole=run(10000, 104.0, stages),
        incremental=run(100, 4.0, stages, "applied"),
        cosine=(0.98, 0.93), quantize_s=0.0, fp32_quality=quality, verger_quality=bench_quality.Quality(0.895, 103, 10),
    )
    # WHEN the summary is written
    lines = summary(measured)
    text = "\n".join(lines)
    # THEN fixed costs are 4 s and 3 s, the targets are judged, and the last line is the whole-folder ratio
    assert re.search(r"verger incremental 100 into store\s+100\s+4\.0\s+25\.0\s+3\.0\s+10\.00", text)
    assert re.search(r"verger whole folder 10000\s+10000\s+104\.0\s+96\.2\s+4\.0\s+10\.00\s+1\.92x", text)
    assert "incremental fixed cost 3.0 s <= 5 s MET" in text
    assert "whole folder 0.38 of the reference >= 0.95 NOT MET" in text
    assert "top-1 within 1 point MET" in text and "PCA k within 5 % MET" in text
    assert "verger incremental, wall: extract 4.0 s, write+commit 5.0 s, PCA applied 6.0 s, rest -11.0 s" in text
    assert lines[-1] == "ratio verger/baseline: 1.92x"
    assert "bf16 whole folder 1.92x >= 5x NOT MET" in text


def test_an_int8_summary_judges_what_users_see_and_names_the_quantization_time_outside_the_runs():
    # GIVEN an int8 bench whose model took 42 s to quantize, and a top-1 drop of 2 points
    stages = {"fetch_task_s": 1, "decode_task_s": 2, "inference_task_s": 3, "extract_wall": 4,
              "write_and_commit": 5, "pca": 6}
    measured = Measured(
        engine="openvino", precision=PrecisionChoice("int8", "forced"),
        baseline=run(10000, 200.0), reference=run(10000, 40.0), reference_load_s=1.0,
        first=run(2000, 24.0, stages), whole=run(10000, 104.0, stages),
        incremental=run(100, 4.0, stages, "applied"), cosine=(0.98, 0.93), quantize_s=42.0,
        fp32_quality=bench_quality.Quality(top1=0.9, k=100, test=10),
        verger_quality=bench_quality.Quality(0.88, 104, 10),
    )
    # WHEN the summary is written
    text = "\n".join(summary(measured))
    # THEN the top-1 bar fails, k passes, the bf16-only speed target is not applied, and 42 s is named
    assert "top-1 within 1 point NOT MET" in text and "PCA k within 5 % MET" in text
    assert "bf16 whole folder" not in text
    assert "quantized on the folder's plain series in 42.0 s" in text
