"""The EMR step's entry point refuses bad arguments before starting Spark, naming the problem."""
import hashlib
import os

import pytest

from contract.manifest import build_manifest
from emr_job.engines.weights_file import WeightsError
from emr_job.step import main
from emr_job.weights import resolve_weights
from tests.conftest import WEIGHTS


def test_missing_weights_stop_the_step_with_a_message(tmp_path, capsys):
    manifest = tmp_path / "m.json"
    manifest.write_text(build_manifest("incremental", f"file://{tmp_path}", []).to_json())
    code = main(["--manifest", f"file://{manifest}", "--warehouse", str(tmp_path / "wh"),
                 "--weights", str(tmp_path / "nothing.h5")])
    assert code == 2
    assert "weights file not found" in capsys.readouterr().err


def test_an_invalid_manifest_stops_the_step_with_a_message(tmp_path, capsys):
    manifest = tmp_path / "m.json"
    manifest.write_text('{"version": 99}')
    code = main(["--manifest", f"file://{manifest}", "--warehouse", str(tmp_path / "wh"), "--weights", str(WEIGHTS)])
    assert code == 2
    assert "unknown manifest version 99" in capsys.readouterr().err


def test_no_weights_at_all_is_an_error_not_random_weights(monkeypatch):
    monkeypatch.delenv("VERGER_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match="no weights given"):
        resolve_weights(None)


def test_weights_staged_in_s3_are_downloaded_once_per_version_and_checked(bucket):
    # GIVEN the genuine weights staged with their sha256, as bootstrap.stage does
    digest = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    bucket.put_object(Bucket="verger-test", Key="models/w.h5", Body=WEIGHTS.read_bytes(), Metadata={"sha256": digest})
    # WHEN resolved twice
    path = resolve_weights("s3://verger-test/models/w.h5")
    modified = os.path.getmtime(path)
    again = resolve_weights("s3://verger-test/models/w.h5")
    # THEN the same local copy serves both, with the staged bytes
    assert again == path and os.path.getmtime(again) == modified
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest


def test_weights_whose_bytes_do_not_match_the_staged_sha256_are_refused(bucket):
    bucket.put_object(Bucket="verger-test", Key="models/w.h5", Body=WEIGHTS.read_bytes(), Metadata={"sha256": "0" * 64})
    with pytest.raises(WeightsError, match="do not match the sha256"):
        resolve_weights("s3://verger-test/models/w.h5")


def test_weights_staged_without_a_checksum_are_refused_with_how_to_stage_them(bucket, tmp_path):
    # GIVEN genuine weights uploaded by hand, without the sha256 metadata bootstrap.stage records
    bucket.put_object(Bucket="verger-test", Key="models/w.h5", Body=WEIGHTS.read_bytes())
    # WHEN resolved  THEN they are refused, and the message says how to stage them
    with pytest.raises(WeightsError, match=r"no recorded sha256.*python -m bootstrap\.stage --bucket verger-test"):
        resolve_weights("s3://verger-test/models/w.h5")
    # AND nothing was downloaded into the cache
    assert not (tmp_path / "cache" / "weights").exists()


def test_a_batch_of_another_feature_version_than_the_store_is_refused_before_spark_starts(tmp_path, capsys,
                                                                                          monkeypatch):
    from contract import layout
    from emr_job import store
    from emr_job.engines import weights_sha256
    from tests.unit.job.test_feature_version import commit
    from tests.unit.job.test_int8_model import save_model
    from tests.unit.test_engines import write_keras_weights, expected_layer_shapes

    # GIVEN an fp32 store, and an int8 model of valid weights
    warehouse = str(tmp_path / "wh")
    commit(store.open_catalog(warehouse), warehouse, "incremental", ["raw/A/a.jpg"], layout.FEATURE_VERSION,
           "2026-01-01")
    weights = write_keras_weights(tmp_path / "w.h5", expected_layer_shapes())
    save_model(tmp_path / "int8-tiny", weights_sha256(weights))
    manifest = tmp_path / "m.json"
    manifest.write_text(build_manifest("incremental", f"file://{tmp_path}", []).to_json())
    monkeypatch.setattr("emr_job.session.get_session", lambda *_: pytest.fail("Spark started"))
    # WHEN an int8 step runs on it THEN it is refused, naming both versions, with Spark never started
    code = main(["--manifest", f"file://{manifest}", "--warehouse", warehouse, "--weights", weights,
                 "--precision", "int8", "--int8-model", str(tmp_path / "int8-tiny")])
    assert code == 2
    assert f"holds features of version {layout.FEATURE_VERSION}; this batch would add" in capsys.readouterr().err
