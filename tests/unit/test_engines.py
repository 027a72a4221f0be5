"""The engines' plumbing with fake models: load-once caching, weights checks, batch checks, ONNX cache.

Real weights and real images are in tests/integration/test_engines_real.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from emr_job import engines
from emr_job.engines import onnx_runtime as engines_onnx
from emr_job.engines import WeightsError, check_batch, load_extractor, weights_sha256
from emr_job.engines.weights_file import expected_layer_shapes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_keras_weights(path, shapes: dict[str, list[tuple[int, ...]]], fill: float = 0.0) -> str:
    """A Keras legacy-layout HDF5 weights file with these layers (datasets left unwritten: tiny)."""
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [name.encode() for name in ["input_1", *shapes]]
        file.create_group("input_1").attrs["weight_names"] = []
        for layer, layer_shapes in shapes.items():
            group = file.create_group(layer)
            names = [f"{layer}/w{index}:0" for index in range(len(layer_shapes))]
            group.attrs["weight_names"] = [name.encode() for name in names]
            for name, shape in zip(names, layer_shapes):
                group.create_dataset(name, shape=shape, dtype="f4", fillvalue=fill)
    return str(path)


@pytest.fixture
def weights(tmp_path) -> str:
    return write_keras_weights(tmp_path / "mobilenet_v2_no_top.h5", expected_layer_shapes())


@pytest.fixture
def fake_engine(monkeypatch):
    """Replace the real builders with one that records each build and returns per-image sums."""
    builds = []

    def build(options):
        builds.append(options)
        return lambda images: np.repeat(images.sum(axis=(1, 2, 3))[:, None], 1280, axis=1)

    monkeypatch.setattr(engines, "_loaded", {})
    monkeypatch.setitem(engines._BUILDERS, "onnx", build)
    return builds


def batch(n: int) -> np.ndarray:
    return np.full((n, 224, 224, 3), 0.5, np.float32)  # (n, 224, 224, 3)


def test_second_load_in_a_process_returns_the_same_extractor_without_rebuilding(weights, fake_engine, tmp_path):
    # GIVEN one extractor already loaded for these weights, engine and threads
    first = load_extractor(weights, "onnx", threads=2, cache_dir=str(tmp_path))
    # WHEN the same extractor is asked for again
    second = load_extractor(weights, "onnx", threads=2, cache_dir=str(tmp_path))
    # THEN it is the same object and the model was built once
    assert second is first
    assert len(fake_engine) == 1


def test_other_threads_or_other_weights_build_another_extractor(weights, fake_engine, tmp_path):
    # GIVEN an extractor for these weights on 2 threads
    first = load_extractor(weights, "onnx", threads=2)
    other_weights = write_keras_weights(tmp_path / "other.h5", expected_layer_shapes(), fill=1.0)
    # WHEN asked for 1 thread, or for weights with other contents
    one_thread = load_extractor(weights, "onnx", threads=1)
    other = load_extractor(other_weights, "onnx", threads=2)
    # THEN each is a separate build keyed by the weights' checksum
    assert one_thread is not first and other is not first
    assert [options.threads for options in fake_engine] == [2, 1, 2]
    assert fake_engine[2].weights_sha256 == weights_sha256(other_weights) != weights_sha256(weights)


def test_extractor_returns_float32_features_per_image(weights, fake_engine):
    # GIVEN a loaded extractor
    extract = load_extractor(weights, "onnx")
    # WHEN it runs on three images
    features = extract(batch(3))
    # THEN it returns one float32 1280-vector per image, computed by the engine
    assert features.shape == (3, 1280) and features.dtype == np.float32
    np.testing.assert_allclose(features[:, 0], 0.5 * 224 * 224 * 3)


def test_empty_batch_gives_no_features_without_running_the_engine(weights, fake_engine):
    # GIVEN a loaded extractor
    extract = load_extractor(weights, "onnx")
    # WHEN it gets zero images
    features = extract(batch(0))
    # THEN it returns an empty (0, 1280) array
    assert features.shape == (0, 1280) and features.dtype == np.float32


@pytest.mark.parametrize(
    "images, described",
    [
        (np.zeros((2, 100, 100, 3), np.float32), "(2, 100, 100, 3) float32"),
        (np.zeros((2, 224, 224, 3), np.float64), "(2, 224, 224, 3) float64"),
        (np.zeros((224, 224, 3), np.float32), "(224, 224, 3) float32"),
        (np.zeros((1, 224, 224, 4), np.uint8), "(1, 224, 224, 4) uint8"),
    ],
)
def test_wrong_batch_shape_or_dtype_names_what_was_expected_and_got(images, described):
    # GIVEN a batch that is not float32 (n, 224, 224, 3)
    # WHEN it is checked
    with pytest.raises(ValueError) as error:
        check_batch(images)
    # THEN the message says what was expected and what came
    assert str(error.value) == f"expected (n, 224, 224, 3) float32, got {described}"


def test_engine_returning_the_wrong_shape_is_an_error_not_bad_features(weights, monkeypatch):
    # GIVEN an engine that returns 1000 values per image
    monkeypatch.setattr(engines, "_loaded", {})
    monkeypatch.setitem(engines._BUILDERS, "onnx", lambda options: lambda images: np.zeros((len(images), 1000)))
    extract = load_extractor(weights, "onnx")
    # WHEN it runs
    with pytest.raises(RuntimeError, match=r"engine returned \(2, 1000\), expected \(2, 1280\)"):
        extract(batch(2))


def test_unknown_engine_is_refused_with_the_known_ones(weights):
    with pytest.raises(ValueError, match=r"unknown engine 'tensorrt': expected one of keras, onnx"):
        load_extractor(weights, "tensorrt")


def test_missing_weights_file_is_refused(tmp_path, fake_engine):
    missing = str(tmp_path / "nope.h5")
    with pytest.raises(WeightsError, match=f"weights file not found: {missing}"):
        load_extractor(missing)
    assert fake_engine == []


def test_random_bytes_are_refused_as_not_hdf5(tmp_path, fake_engine):
    # GIVEN a file of random bytes
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    # WHEN it is loaded THEN it is refused before any model is built
    with pytest.raises(WeightsError, match="is not HDF5"):
        load_extractor(str(garbage))
    assert fake_engine == []


def test_hdf5_that_is_not_keras_weights_is_refused(tmp_path):
    # GIVEN an HDF5 file without Keras' layer list
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=np.zeros(3))
    with pytest.raises(WeightsError, match="has no 'layer_names': not Keras HDF5 weights"):
        load_extractor(str(path))


def test_include_top_weights_are_refused_as_having_a_classification_head(tmp_path):
    # GIVEN the no-top layers plus ImageNet's 1000-class Logits layer
    shapes = {**expected_layer_shapes(), "Logits": [(1280, 1000), (1000,)]}
    path = write_keras_weights(tmp_path / "with_top.h5", shapes)
    with pytest.raises(WeightsError, match=r"classification head \(layer 'Logits'\): it is an include_top=True file"):
        load_extractor(path)


def test_weights_of_another_width_are_refused_naming_the_layer(tmp_path):
    # GIVEN weights whose last convolution has 1024 filters instead of 1280
    shapes = {**expected_layer_shapes(), "Conv_1": [(1, 1, 320, 1024)]}
    path = write_keras_weights(tmp_path / "narrow.h5", shapes)
    with pytest.raises(WeightsError, match=r"layer 'Conv_1' has shapes \[\(1, 1, 320, 1024\)\], expected \[\(1, 1, 320, 1280\)\]"):
        load_extractor(path)


def test_weights_of_another_architecture_are_refused_naming_a_missing_layer(tmp_path):
    # GIVEN a Keras weights file of a small dense network
    path = write_keras_weights(tmp_path / "dense.h5", {"dense": [(4, 2), (2,)]})
    with pytest.raises(WeightsError, match=r"lacks layer 'Conv1'.*\(1 weighted layers found, 104 expected\)"):
        load_extractor(path)


def write_tiny_onnx(path) -> np.ndarray:
    """An ONNX model images -> mean colour @ projection: (n, 224, 224, 3) -> (n, 1280)."""
    projection = np.random.default_rng(1).normal(size=(3, 1280)).astype(np.float32)  # (3, 1280)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "projection"], ["features"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 224, 224, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 1280])],
        [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
         numpy_helper.from_array(projection, "projection")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return projection


def test_cached_onnx_model_is_used_without_converting_or_importing_tensorflow(weights, tmp_path):
    # GIVEN an ONNX model already cached for these weights and this converter
    cache = tmp_path / "cache"
    cached = engines_onnx.cached_model_path(weights_sha256(weights), str(cache))
    os.makedirs(cache)
    projection = write_tiny_onnx(cached)
    # WHEN a fresh process loads the onnx engine and runs it
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from emr_job.engines import load_extractor
        extract = load_extractor({weights!r}, "onnx", threads=1, cache_dir={str(cache)!r})
        images = np.random.default_rng(2).random((2, 224, 224, 3), dtype=np.float32)
        np.save(sys.argv[1], extract(images))
        print("tensorflow" in sys.modules, "tf2onnx" in sys.modules)
    """)
    out = tmp_path / "features.npy"
    result = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # THEN it ran the cached model and never imported TensorFlow or the converter
    assert result.stdout.split() == ["False", "False"]
    images = np.random.default_rng(2).random((2, 224, 224, 3), dtype=np.float32)
    np.testing.assert_allclose(np.load(out), images.mean(axis=(1, 2)) @ projection, rtol=1e-4, atol=1e-5)


def test_atomic_write_leaves_the_complete_file_and_no_temporary(tmp_path):
    # GIVEN a cache folder that does not exist yet
    target = tmp_path / "cache" / "model.onnx"
    # WHEN a payload is written, then replaced
    engines_onnx.write_atomically(str(target), b"first")
    engines_onnx.write_atomically(str(target), b"second")
    # THEN only the final file is there, complete
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["model.onnx"]


def test_converting_ahead_of_time_leaves_the_model_where_a_job_looks_and_is_done_once(weights, tmp_path, monkeypatch, capsys):
    # GIVEN a folder holding the weights (as the image build mounts it) and a stand-in converter
    from emr_job.engines import convert

    conversions = []
    monkeypatch.setattr(engines_onnx, "_convert", lambda path: conversions.append(path) or b"onnx model")
    cache = tmp_path / "cache"
    # WHEN the build converts the folder, then a job asks for the model of the same weights
    assert convert.main([os.path.dirname(weights), "--cache-dir", str(cache)]) == 0
    found = engines_onnx.onnx_model_path(weights, weights_sha256(weights), str(cache))
    # THEN the model sits at the job's cache key, and the job did not convert again
    assert found == engines_onnx.cached_model_path(weights_sha256(weights), str(cache))
    assert open(found, "rb").read() == b"onnx model"
    assert conversions == [weights]
    assert f"-> {found}" in capsys.readouterr().out


def test_converting_an_empty_folder_says_so_and_wrong_weights_fail_the_build(tmp_path, capsys):
    from emr_job.engines import convert

    # GIVEN an empty weights folder  WHEN converted  THEN nothing happens, and the output says why
    (tmp_path / "weights").mkdir()
    assert convert.main([str(tmp_path / "weights"), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "nothing converted" in capsys.readouterr().out
    # GIVEN a file that is not MobileNetV2 weights  WHEN converted  THEN the build step fails naming it
    (tmp_path / "weights" / "bad.h5").write_bytes(b"not hdf5")
    assert convert.main([str(tmp_path / "weights"), "--cache-dir", str(tmp_path / "cache")]) == 1
    assert "bad.h5" in capsys.readouterr().err
