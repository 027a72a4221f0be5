"""The partition function with fake extractors: batching, quarantine rows, shape checks."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emr_job import extract, fetch
from emr_job.extract import extract_frame


def write_images(folder, count):
    keys = []
    for index in range(count):
        path = folder / "Kiwi" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), (index, 0, 0)).save(path)
        keys.append(f"Kiwi/{index}.png")
    return keys


def frame(keys):
    return pd.DataFrame({"image_key": keys, "etag": ["e"] * len(keys), "label": ["Kiwi"] * len(keys)})


def test_images_are_inferred_in_batches_of_the_requested_size(tmp_path):
    # GIVEN 10 images and an extractor that records each batch size
    keys = write_images(tmp_path, 10)
    sizes = []

    def recording(batch):
        sizes.append(len(batch))
        return np.full((len(batch), 1280), len(sizes), np.float32)

    # WHEN extracted with batch size 4
    out = extract_frame(frame(keys), f"file://{tmp_path}", recording, 4)
    # THEN batches are 4, 4, 2 and every row has its 1280 features
    assert sizes == [4, 4, 2]
    assert out["reason"].isna().all()
    assert [vector.shape for vector in out["features"]] == [(1280,)] * 10
    assert out["label"].tolist() == ["Kiwi"] * 10


def test_bad_rows_are_quarantined_and_the_good_ones_still_get_features(tmp_path):
    # GIVEN two good images, an empty file and a missing one
    keys = write_images(tmp_path, 2)
    (tmp_path / "Kiwi" / "empty.jpg").write_bytes(b"")
    keys += ["Kiwi/empty.jpg", "Kiwi/gone.jpg"]
    out = extract_frame(frame(keys), f"file://{tmp_path}", lambda b: np.zeros((len(b), 1280), np.float32), 8)
    # THEN
    assert out["reason"].tolist() == [None, None, "empty", "missing"]
    assert out["features"].iloc[2] is None and out["features"].iloc[3] is None
    assert "gone.jpg" in out["detail"].iloc[3]


def test_an_extractor_returning_the_wrong_shape_fails_with_expected_and_received(tmp_path):
    keys = write_images(tmp_path, 3)
    with pytest.raises(ValueError, match=r"shape \(3, 10\), expected \(3, 1280\)"):
        extract_frame(frame(keys), f"file://{tmp_path}", lambda b: np.zeros((len(b), 10), np.float32), 8)


def test_stage_timings_are_recorded_per_row(tmp_path):
    keys = write_images(tmp_path, 3)
    out = extract_frame(frame(keys), f"file://{tmp_path}", lambda b: np.zeros((len(b), 1280), np.float32), 2)
    assert (out[["fetch_s", "decode_s", "infer_s"]] >= 0).all().all()
    assert out["decode_s"].sum() > 0



def test_photos_are_fetched_in_windows_and_the_manifest_size_refuses_an_oversized_one(tmp_path, monkeypatch):
    # GIVEN 40 photos (more than one fetch window) of which the manifest says one is 1 GiB
    keys = write_images(tmp_path, 40)
    sizes = [100] * 40
    sizes[7] = 2**30
    windows = []

    def recording_fetch(source, window_keys, etags, window_sizes):
        windows.append(list(window_keys))
        return fetch.fetch_all(source, window_keys, etags, window_sizes)

    monkeypatch.setattr(extract, "fetch_all", recording_fetch)
    # WHEN extracted
    out = extract_frame(frame(keys).assign(size=sizes), f"file://{tmp_path}",
                        lambda b: np.zeros((len(b), 1280), np.float32), 8)
    # THEN that one is refused as too large, every other row has features, and no window was larger
    # than FETCH_WINDOW_ROWS
    assert out["reason"].tolist() == [None] * 7 + ["too_large"] + [None] * 32
    assert [key for window in windows for key in window] == keys
    assert len(windows) > 1 and max(map(len, windows)) <= extract.FETCH_WINDOW_ROWS
