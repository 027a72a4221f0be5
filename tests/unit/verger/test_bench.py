"""The benchmark's plumbing: process-tree memory sampling, image links, the baseline's output."""
import sys

import pytest

from verger.bench import BASELINE_LINE, link_images, run_sampled


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
