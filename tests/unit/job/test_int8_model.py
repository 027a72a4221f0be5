"""The int8 path's plumbing on a tiny model, whatever this CPU is: choosing int8 (forced on both
branches), the model folder's checks, and its download from S3. The quantization of the real
graph and its numerical check on real photos are in tests/integration/test_int8_real.py."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from emr_job.engines import check_precision, load_extractor, weights_sha256
from emr_job.engines.int8_model import (CALIBRATION_JSON, MODEL_BIN, MODEL_FILES, MODEL_XML, Int8ModelError,
                                        calibration_record, read_int8_model)
from emr_job.engines.precision import choose_precision
from emr_job.weights import resolve_int8_model
from tests.unit.job.conftest import BUCKET
from tests.unit.test_engines import weights, write_tiny_onnx  # noqa: F401 (fixture)
from tests.unit.test_precision import AMX, AVX2_ONLY, AVX512_BF16


def save_model(folder, weights_sha: str):
    """A tiny ONNX model (mean colour @ projection) saved as OpenVINO IR with a calibration record;
    returns its projection."""
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    projection = write_tiny_onnx(folder / "tiny.onnx")
    ov.save_model(ov.convert_model(str(folder / "tiny.onnx")), str(folder / MODEL_XML), compress_to_fp16=False)
    (folder / "tiny.onnx").unlink()
    record = calibration_record(weights_sha, {"A/1.jpg": "00" * 32}, {"preset": "test"}, str(folder))
    (folder / CALIBRATION_JSON).write_text(json.dumps(record))
    return projection


@pytest.fixture
def model(weights, tmp_path):  # noqa: F811
    folder = tmp_path / "int8-tiny"
    return folder, save_model(folder, weights_sha256(weights))


@pytest.mark.parametrize("flags, named", [(AVX512_BF16, "reports avx512_vnni"), (AMX, "reports amx_int8"),
                                          (AVX2_ONLY, "none of avx512_vnni, avx_vnni, amx_int8")])
def test_int8_is_taken_when_asked_for_and_says_whether_the_cpu_has_int8_dot_products(flags, named):
    # GIVEN a CPU with or without VNNI WHEN int8 is asked for THEN it runs, and the reason says which
    choice = choose_precision("int8", flags)
    assert choice.precision == "int8" and named in choice.reason
    # AND auto never picks it: int8 features depend on a calibration someone chose
    assert choose_precision("auto", flags).precision != "int8"


def test_an_int8_model_folder_runs_on_openvino_with_the_weights_it_was_made_from(weights, model):  # noqa: F811
    folder, projection = model
    images = np.random.default_rng(3).random((3, 224, 224, 3), dtype=np.float32)
    extract = load_extractor(weights, "openvino", threads=1, precision="int8", int8_model=str(folder))
    np.testing.assert_allclose(extract(images), images.mean(axis=(1, 2)) @ projection, rtol=1e-4, atol=1e-5)


def test_int8_without_a_model_or_on_an_engine_without_an_int8_path_is_refused(weights):  # noqa: F811
    with pytest.raises(ValueError, match="needs an int8 model.*verger quantize"):
        load_extractor(weights, "openvino", threads=1, precision="int8")
    with pytest.raises(ValueError, match="needs the openvino engine; onnx runs fp32 only"):
        check_precision("onnx", "int8")


def test_a_foreign_altered_or_incomplete_int8_model_is_refused_naming_the_problem(weights, model, tmp_path):  # noqa: F811
    folder, _ = model
    # made from other weights
    foreign = tmp_path / "foreign"
    save_model(foreign, "ff" * 32)
    with pytest.raises(Int8ModelError, match="quantized from weights ffffffffffff, not from these"):
        load_extractor(weights, "openvino", threads=1, precision="int8", int8_model=str(foreign))
    # a record whose id does not match what it names
    record = json.loads((folder / CALIBRATION_JSON).read_text())
    (folder / CALIBRATION_JSON).write_text(json.dumps({**record, "photos": {"A/2.jpg": "11" * 32}}))
    with pytest.raises(Int8ModelError, match="does not match its calibration record"):
        read_int8_model(str(folder))
    (folder / CALIBRATION_JSON).write_text(json.dumps(record))
    # altered weights file
    with open(folder / MODEL_BIN, "ab") as file:
        file.write(b"\0")
    with pytest.raises(Int8ModelError, match="model.bin differs from the file it was saved as"):
        read_int8_model(str(folder))
    # a file missing
    (folder / MODEL_BIN).unlink()
    with pytest.raises(Int8ModelError, match="lacks model.bin: make one with `verger quantize`"):
        read_int8_model(str(folder))


def test_an_int8_model_on_s3_is_downloaded_checked_and_refused_when_altered(bucket, weights, model, tmp_path):  # noqa: F811
    # GIVEN the model's folder under an S3 prefix
    folder, _ = model
    for name in MODEL_FILES:
        bucket.upload_file(str(folder / name), BUCKET, f"models/int8-tiny/{name}")
    # WHEN an int8 batch resolves it THEN it is a checked local copy with the same id
    local = resolve_int8_model(f"s3://{BUCKET}/models/int8-tiny/", "int8", weights)
    assert read_int8_model(local).model_id == read_int8_model(str(folder)).model_id
    # AND a copy altered in S3 is refused once the local one is gone, never run
    shutil.rmtree(local)
    bucket.put_object(Bucket=BUCKET, Key="models/int8-tiny/model.bin", Body=b"not the model")
    with pytest.raises(Int8ModelError, match="model.bin differs"):
        resolve_int8_model(f"s3://{BUCKET}/models/int8-tiny", "int8", weights)


def test_the_int8_model_argument_belongs_to_int8_batches_only(weights, model):  # noqa: F811
    folder, _ = model
    with pytest.raises(Int8ModelError, match="--int8-model is for --precision int8 only"):
        resolve_int8_model(str(folder), "fp32", weights)
    with pytest.raises(Int8ModelError, match="precision int8 needs --int8-model"):
        resolve_int8_model(None, "int8", weights)
    assert resolve_int8_model(None, "fp32", weights) is None
