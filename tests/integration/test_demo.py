"""`verger demo` end to end: moto's S3 + SQS, the real handler, the real Spark job, the report."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from verger.demo.console import Console
from verger.demo.run import DemoOptions, run_demo
from verger.report import batch_report, map_points

pytestmark = pytest.mark.integration

# Labels with spaces: S3 notifications encode them as '+', which the handler must decode.
LABELS = ("Apple Braeburn", "Cherry 1", "Kiwi", "Lemon", "Onion White")
PER_LABEL = 30


def five_class_folder(fruits: Path, root: Path) -> Path:
    """30 images of each of 5 labels, copied from the shared data (a link out of the folder is refused)."""
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for name in sorted(os.listdir(fruits / label))[:PER_LABEL]:
            shutil.copyfile(fruits / label / name, root / label / name)
    return root


@pytest.fixture(scope="module")
def demo(tmp_path_factory, fruits, weights):
    images = five_class_folder(fruits, tmp_path_factory.mktemp("images"))
    warehouse = tmp_path_factory.mktemp("warehouse")
    endpoint_before = os.environ.get("AWS_ENDPOINT_URL")
    # GIVEN 150 images over 5 labels: a fifth of each label held back for the second wave, one
    # photo of each of 3 labels moved to the inbox, and the first-wave frame next to each deleted later
    options = DemoOptions(images=images, warehouse=warehouse, weights=weights, second_wave_share=0.2)
    # WHEN the demo runs every phase, then `verger run` on the same photos
    with open(tmp_path_factory.getbasetemp() / "demo-screen.txt", "w", encoding="utf-8") as screen:
        result = run_demo(options, Console(screen, None))
    phases = {phase.name: phase for phase in result.phases}
    return result, phases, warehouse, endpoint_before


def only_batch(phase) -> str:
    (batch_id,) = phase.batch_ids
    return batch_id


def test_first_wave_is_stored_as_one_batch_that_fits_the_pca(demo):
    _, phases, warehouse, _ = demo
    wave = phases["wave 1"]
    report = batch_report(warehouse, only_batch(wave))
    # THEN the 117 uploads (plus moto's s3:TestEvent) became one manifest, all extracted, PCA fitted
    assert wave.images_uploaded == 117 and wave.records == 118
    assert report["images"] == {"in_manifest": 117, "already_present": 0, "already_quarantined": 0,
                                "new": 117, "quarantined": 0,
                                "quarantined_by_reason": {}}
    assert report["pca"]["action"] == "refit" and report["pca"]["rows_fitted"] == 117
    assert (wave.feature_rows, wave.feature_keys) == (117, 117)
    assert wave.step_seconds[only_batch(wave)] > report["seconds"]["total"]


def test_second_wave_extracts_only_new_images_and_applies_the_stored_pca_with_drift(demo):
    _, phases, warehouse, _ = demo
    fitted = batch_report(warehouse, only_batch(phases["wave 1"]))["pca"]
    wave = phases["wave 2"]
    report = batch_report(warehouse, only_batch(wave))
    # THEN only the 30 held-back images (6 of each label) were in the batch, projected by wave 1's model
    assert report["images"]["in_manifest"] == 30 and report["images"]["new"] == 30
    assert report["pca"]["action"] == "applied"
    assert (report["pca"]["version"], report["pca"]["k"]) == (fitted["version"], fitted["k"])
    assert report["pca"]["rows_projected"] == 30
    drift = report["pca"]["drift"]
    assert drift["rows"] == 30 and 0 < drift["captured_variance_share"] <= 1
    assert drift["mean_reconstruction_error"] > 0
    assert (wave.feature_rows, wave.feature_keys) == (147, 147)


def test_duplicate_delivery_of_a_wave_1_batch_starts_nothing_and_adds_no_rows(demo):
    _, phases, _, _ = demo
    replay = phases["duplicate delivery"]
    # THEN every message was handled again, no new manifest appeared, and the store is unchanged
    assert replay.records == phases["wave 1"].records
    assert replay.batch_ids == []
    assert (replay.feature_rows, replay.feature_keys) == (147, 147)


def test_inbox_photos_get_suggestions_that_name_their_label(demo):
    result, phases, warehouse, _ = demo
    inbox = phases["inbox"]
    report = batch_report(warehouse, only_batch(inbox))
    # THEN the 3 unlabelled photos were extracted and each got a suggestion
    assert report["images"]["new"] == 3
    assert report["suggestions"]["action"] == "suggested" and report["suggestions"]["photos"] == 3
    page = result.report.read_text(encoding="utf-8")
    for n in (1, 2, 3):
        assert f"inbox/photo-{n}.jpg" in page
    # the photos come from the first three labels; the top suggestion is marked when it is right
    assert page.count("class=hit") >= 2


def test_deleted_photos_leave_the_store_in_one_batch_that_extracts_nothing(demo):
    result, phases, warehouse, _ = demo
    deletes = phases["deletes"]
    report = batch_report(warehouse, only_batch(deletes))
    # THEN the 3 deletions' notifications became one batch that erased exactly those photos
    assert len(result.plan.deleted) == deletes.records == 3
    assert report["erasure"]["photos_erased"] == 3 and report["images"]["new"] == 0
    assert (deletes.feature_rows, deletes.feature_keys) == (147, 147)
    # and the full recompute that follows lists the bucket: they do not come back
    stored = set(map_points(warehouse)["image_key"])
    assert not stored & {f"raw/{key}" for key in result.plan.deleted}


def test_the_full_recompute_bar_counts_the_photos_its_step_re_extracted(demo, tmp_path_factory):
    # its manifest names no photo (the job lists the bucket), so the count comes from the step's report
    screen = (tmp_path_factory.getbasetemp() / "demo-screen.txt").read_text(encoding="utf-8")
    bars = [line for line in screen.replace("\r", "\n").splitlines() if line.startswith("full recompute")]
    assert "147/147 img" in bars[-1]


def test_full_recompute_reextracts_everything_under_a_new_pca_version(demo):
    _, phases, warehouse, _ = demo
    first_version = batch_report(warehouse, only_batch(phases["wave 1"]))["pca"]["version"]
    recompute = phases["full recompute"]
    report = batch_report(warehouse, only_batch(recompute))
    # THEN the 147 photos still in the bucket were re-extracted in full mode, refitted, all projected
    assert report["mode"] == "full" and report["images"]["new"] == 147
    assert report["pca"]["action"] == "refit" and report["pca"]["rows_fitted"] == 147
    assert report["pca"]["version"] != first_version
    points = map_points(warehouse)
    assert len(points) == 147 and set(points["label"]) == {*LABELS, "(no label)"}
    assert (recompute.feature_rows, recompute.feature_keys) == (147, 147)


def test_verger_run_on_the_same_photos_is_timed_for_comparison(demo):
    result, phases, warehouse, _ = demo
    reference = result.reference
    # THEN `verger run` processed the waves' 147 photos, and the ratio compares it with the waves
    assert reference.images == 147 and reference.seconds > 0
    flow = sum(phases[name].seconds for name in ("wave 1", "wave 2"))
    assert reference.event_flow_seconds == pytest.approx(flow)
    stored = map_points(warehouse / "reference-run" / "warehouse")
    assert len(stored) == 147


def test_report_is_an_html_page_with_its_figures_and_thumbnails(demo):
    result, _, _, _ = demo
    page = result.report.read_text(encoding="utf-8")
    # THEN the page names every figure, each is a real PNG next to it, and every thumbnail exists
    for figure in ("costs.png", "batches.png", "variance.png", "map.png", "drift.png"):
        assert f'src="{figure}"' in page
        content = (result.report.parent / figure).read_bytes()
        assert content[:8] == b"\x89PNG\r\n\x1a\n" and len(content) > 10_000
    thumbs = re.findall(r'src="(thumbs/[^"]+)"', page)
    assert len(thumbs) >= 3 * 6 + 4 * 6
    assert all((result.report.parent / thumb).stat().st_size > 500 for thumb in thumbs)
    assert "Quarantine" in page and "wave 2" in page
    # the fixed vs per-image split read from the steps' own reports
    assert "ms per image extracting" in page


def test_report_renders_in_headless_chromium(demo, tmp_path):
    result, _, _, _ = demo
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed to check the report in a browser: apt-get install chromium"
    screenshot = tmp_path / "report.png"
    # WHEN the page is opened from disk in headless Chromium
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1280,6000",
                    f"--screenshot={screenshot}", result.report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    # THEN the screenshot shows a page with pictures, not a blank or broken one
    from PIL import Image

    with Image.open(screenshot) as image:
        colours = image.convert("RGB").resize((320, 1500)).getcolors(maxcolors=1_000_000)
    assert len(colours) > 2_000
    if os.environ.get("VERGER_KEEP_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["VERGER_KEEP_SCREENSHOT"])


def test_embedded_server_is_stopped_and_the_environment_restored(demo):
    result, _, _, endpoint_before = demo
    address = urlparse(result.endpoint)
    # THEN nothing listens on the server's port, and boto3 is no longer pointed at it
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address.hostname, address.port), timeout=2).close()
    assert os.environ.get("AWS_ENDPOINT_URL") == endpoint_before


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (children before their parent exits)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_interrupt_during_a_spark_step_stops_spark_and_the_server(tmp_path, fruits, weights):
    # GIVEN `verger demo` running its first Spark step
    images = five_class_folder(fruits, tmp_path / "images")
    out = tmp_path / "out.txt"
    with out.open("w") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "verger.cli", "demo", "--images", str(images),
             "--warehouse", str(tmp_path / "warehouse"), "--weights", weights],
            stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 240
            while not any("emr_job/step.py" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                          for pid in descendants(demo.pid) if alive(pid)):
                assert demo.poll() is None and time.monotonic() < deadline, out.read_text()[-2000:]
                time.sleep(0.5)
            children = descendants(demo.pid)
            # WHEN it is interrupted (SIGINT, as Ctrl-C sends)
            demo.send_signal(signal.SIGINT)
            code = demo.wait(timeout=60)
        finally:
            if demo.poll() is None:
                demo.kill()
    # THEN it says so and exits 130, with no Spark process left and its server gone
    log = out.read_text()
    assert code == 130, log[-2000:]
    assert "interrupted" in log
    time.sleep(1)
    assert not [pid for pid in children if alive(pid)]
    port = int(re.search(r"embedded S3 \+ SQS API: http://127\.0\.0\.1:(\d+)", log).group(1))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
