"""Precision selection, forced on both branches whatever this CPU is, and the OpenVINO engine's
plumbing on a tiny ONNX model. The numerical check on real photos is in
tests/integration/test_engines_real.py (run where the CPU has bf16, skipped with a reason elsewhere).
"""
from __future__ import annotations

import numpy as np
import pytest

from emr_job import engines
from emr_job.engines import check_precision, load_extractor, weights_sha256
from emr_job.engines import onnx_runtime as engines_onnx
from emr_job.engines.precision import choose_precision, cpu_flags
from tests.unit.test_engines import weights, write_tiny_onnx  # noqa: F401 (fixture)

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512_vnni", "avx512_bf16"}
AMX = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize("flags, expected, named", [
    (AMX, "bf16", "amx_bf16"),
    (AVX512_BF16, "fp32", "avx512_bf16 but not amx_bf16"),
    (AVX2_ONLY, "fp32", "neither"),
    (frozenset(), "fp32", "neither"),
])
def test_auto_picks_bf16_only_where_it_is_native_and_faster_and_says_why(flags, expected, named):
    # GIVEN a CPU reporting these flags
    # WHEN the precision is chosen automatically
    choice = choose_precision("auto", flags)
    # THEN bf16 only with AMX (AVX-512 BF16 alone ran slower than fp32), and the reason names the evidence
    assert choice.precision == expected
    assert choice.reason.startswith(f"auto: {expected}") and named in choice.reason


@pytest.mark.parametrize("flags", [AVX2_ONLY, AVX512_BF16, AMX])
def test_fp32_is_kept_on_every_cpu(flags):
    assert choose_precision("fp32", flags).precision == "fp32"


def test_bf16_requested_on_a_cpu_without_it_is_refused_naming_the_missing_flags():
    # GIVEN an AVX2-only CPU WHEN bf16 is asked for explicitly
    with pytest.raises(ValueError, match="neither avx512_bf16 nor amx_bf16.*fp32 or auto"):
        choose_precision("bf16", AVX2_ONLY)
    # THEN it is an error, while a bf16 CPU accepts it
    assert choose_precision("bf16", AVX512_BF16).precision == "bf16"
    assert choose_precision("bf16", AMX).precision == "bf16"


def test_unknown_precision_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="fp32, bf16, int8, auto"):
        choose_precision("int4", AVX512_BF16)


def test_cpu_flags_are_read_from_the_first_flags_line(tmp_path):
    # GIVEN a /proc/cpuinfo-like file with two processors
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    # WHEN its flags are read THEN they are the first processor's
    assert cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16"}


def test_bf16_on_an_engine_without_a_bf16_path_is_refused():
    with pytest.raises(ValueError, match="needs the openvino engine; onnx runs fp32 only"):
        check_precision("onnx", "bf16")
    with pytest.raises(ValueError, match="resolve auto first"):
        check_precision("openvino", "auto")


def test_a_worker_whose_cpu_lacks_bf16_refuses_a_bf16_batch(monkeypatch):
    # GIVEN a batch resolved to bf16 on the driver, and a worker CPU with AVX2 only
    monkeypatch.setattr(engines, "cpu_flags", lambda: AVX2_ONLY)
    # WHEN the worker checks the precision THEN it refuses instead of emulating bf16 (or mixing fp32 in)
    with pytest.raises(ValueError, match="bf16 requested but this CPU"):
        check_precision("openvino", "bf16")
    monkeypatch.setattr(engines, "cpu_flags", lambda: AVX512_BF16)
    check_precision("openvino", "bf16")


def test_each_precision_builds_its_own_extractor(weights, monkeypatch):  # noqa: F811
    # GIVEN a recording openvino builder on a CPU that has bf16
    builds = []
    monkeypatch.setattr(engines, "_loaded", {})
    monkeypatch.setattr(engines, "cpu_flags", lambda: AVX512_BF16)
    monkeypatch.setitem(engines._BUILDERS, "openvino",
                        lambda options: builds.append(options) or (lambda images: np.zeros((len(images), 1280))))
    # WHEN fp32 then bf16 then fp32 again are loaded
    first = load_extractor(weights, "openvino", threads=1)
    load_extractor(weights, "openvino", threads=1, precision="bf16")
    again = load_extractor(weights, "openvino", threads=1)
    # THEN fp32 is the default, bf16 is a second build, and fp32 is reused
    assert [options.precision for options in builds] == ["fp32", "bf16"]
    assert again is first


def test_openvino_runs_the_cached_onnx_model_at_fp32_like_onnx_runtime(weights, tmp_path):  # noqa: F811
    # GIVEN a tiny ONNX model cached for these weights
    cache = tmp_path / "cache"
    cache.mkdir()
    projection = write_tiny_onnx(engines_onnx.cached_model_path(weights_sha256(weights), str(cache)))
    images = np.random.default_rng(3).random((3, 224, 224, 3), dtype=np.float32)
    # WHEN OpenVINO runs it at fp32, twice (its output buffer is reused between requests)
    extract = load_extractor(weights, "openvino", threads=1, cache_dir=str(cache))
    first = extract(images)
    second = extract(images[:1] * 0)
    # THEN the features are the model's, and the first result was not overwritten by the second
    np.testing.assert_allclose(first, images.mean(axis=(1, 2)) @ projection, rtol=1e-4, atol=1e-5)
    assert np.abs(first).sum() > 0 and np.abs(second).sum() == 0

