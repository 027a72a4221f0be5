"""`python -m bootstrap.stage` against moto: what lands in the bucket, under which keys, with which checksums."""
from __future__ import annotations

import hashlib

import boto3
import pytest
from moto import mock_aws

from bootstrap import stage

BUCKET = "verger-test-bucket"


@pytest.fixture
def s3(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-3"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="eu-west-3")
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
        yield client


def keys(s3) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def body(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_staging_code_uploads_wheel_step_script_bootstrap_action_lock_and_notebook_script(s3, project):
    # WHEN the checkout is staged
    stage.stage_code(s3, BUCKET, project, isolated=False)
    # THEN code/ holds exactly the five artefacts, step.py and the scripts byte for byte
    assert keys(s3) == {"code/verger-0.1.0-py3-none-any.whl", "code/step.py", "code/emr_bootstrap.sh",
                        "code/requirements-job.txt", "code/emr_notebook.sh"}
    assert body(s3, stage.STEP_KEY) == (project / "emr_job" / "step.py").read_bytes()
    assert body(s3, stage.BOOTSTRAP_KEY) == (project / "bootstrap" / "emr_bootstrap.sh").read_bytes()
    assert body(s3, stage.NOTEBOOK_KEY) == (project / "bootstrap" / "emr_notebook.sh").read_bytes()


def test_every_staged_object_carries_the_sha256_of_its_content(s3, project):
    # WHEN the checkout is staged
    staged = stage.stage_code(s3, BUCKET, project, isolated=False)
    # THEN each object's metadata holds the sha256 of the bytes stored, as the command reported
    for item in staged:
        key = item.uri.removeprefix(f"s3://{BUCKET}/")
        stored = hashlib.sha256(body(s3, key)).hexdigest()
        assert s3.head_object(Bucket=BUCKET, Key=key)["Metadata"]["sha256"] == stored == item.sha256


def test_restaging_removes_an_older_wheel_so_the_bootstrap_finds_exactly_one(s3, project):
    # GIVEN a wheel of an older version already staged
    s3.put_object(Bucket=BUCKET, Key="code/verger-0.0.9-py3-none-any.whl", Body=b"old")
    # WHEN the checkout is staged again
    stage.stage_code(s3, BUCKET, project, isolated=False)
    # THEN only the new wheel remains
    assert sorted(k for k in keys(s3) if k.endswith(".whl")) == ["code/verger-0.1.0-py3-none-any.whl"]


def test_weights_go_to_the_key_the_stack_names_with_their_checksum(s3, tmp_path):
    # GIVEN a weights file under another name
    weights = tmp_path / "my-weights.h5"
    weights.write_bytes(b"\x89HDF\r\n" + bytes(range(256)) * 40)
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    # WHEN it is staged
    stage.stage_weights(s3, BUCKET, weights)
    # THEN it lands at the key VERGER_WEIGHTS_URI names, with the sha256 as metadata and as a sha256sum file
    assert body(s3, stage.WEIGHTS_KEY) == weights.read_bytes()
    assert s3.head_object(Bucket=BUCKET, Key=stage.WEIGHTS_KEY)["Metadata"]["sha256"] == expected
    assert body(s3, stage.WEIGHTS_KEY + ".sha256").decode() == (
        f"{expected}  mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5\n"
    )


def test_a_checkout_without_the_step_script_is_refused_by_name(s3, project):
    # GIVEN a checkout whose job has no entry script
    (project / "emr_job" / "step.py").unlink()
    # WHEN it is staged  THEN the error names the missing file and nothing is uploaded
    with pytest.raises(stage.StageError, match=r"emr_job/step\.py not found"):
        stage.stage_code(s3, BUCKET, project, isolated=False)
    assert keys(s3) == set()


def test_missing_weights_file_is_refused_by_name(s3, tmp_path):
    with pytest.raises(stage.StageError, match="weights file .*absent.h5 not found"):
        stage.stage_weights(s3, BUCKET, tmp_path / "absent.h5")


def test_command_line_stages_code_and_weights_and_prints_each_uri(s3, project, tmp_path, capsys):
    # GIVEN weights on disk
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"weights")
    # WHEN the command runs
    status = stage.main(["--bucket", BUCKET, "--project", str(project), "--weights", str(weights),
                         "--no-build-isolation"])
    # THEN it succeeds and prints one line per uploaded object
    printed = capsys.readouterr().out.splitlines()
    assert status == 0
    assert sorted(line.split()[0] for line in printed) == sorted(f"s3://{BUCKET}/{k}" for k in keys(s3))
    assert len(printed) == 8


def test_tls_certificates_are_staged_once_for_the_region_and_kept_on_the_next_run(s3):
    # GIVEN a first staging of the cluster's certificates
    import io, zipfile
    from cryptography import x509

    first = stage.stage_tls_certificates(s3, BUCKET, "eu-west-3")
    body = s3.get_object(Bucket=BUCKET, Key=stage.TLS_CERTIFICATES_KEY)["Body"].read()
    # WHEN staging runs again without --rotate-tls
    again = stage.stage_tls_certificates(s3, BUCKET, "eu-west-3")
    # THEN the zip holds the three PEM files EMR reads, for the region's internal domain, unchanged
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert sorted(archive.namelist()) == ["certificateChain.pem", "privateKey.pem", "trustedCertificates.pem"]
    certificate = x509.load_pem_x509_certificate(archive.read("certificateChain.pem"))
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["*.eu-west-3.compute.internal"]
    assert len(first) == 1 and again == []
    assert s3.get_object(Bucket=BUCKET, Key=stage.TLS_CERTIFICATES_KEY)["Body"].read() == body


def test_command_line_reports_a_missing_bucket_without_a_traceback(s3, project, capsys):
    # WHEN the command targets a bucket that does not exist
    status = stage.main(["--bucket", "no-such-bucket", "--project", str(project), "--no-build-isolation"])
    # THEN it fails with one error line naming the bucket
    assert status == 1
    assert "cannot stage into s3://no-such-bucket" in capsys.readouterr().err


# ---------------------------------------------------------------- the int8 model (--int8-model)
def int8_folder(parent, name: str | None = None, weights_sha256: str = "ab" * 32):
    """A folder as `verger quantize` writes it (model.xml, model.bin, calibration.json recording the
    weights' and the files' sha256), named int8-<its id> unless `name` says otherwise; the model
    files' contents do not matter here."""
    import json

    from emr_job.engines.int8_model import CALIBRATION_JSON, MODEL_BIN, MODEL_XML, calibration_record

    scratch = parent / "scratch"
    scratch.mkdir()
    (scratch / MODEL_XML).write_text("<net name='tiny'/>\n")
    (scratch / MODEL_BIN).write_bytes(bytes(range(256)) * 8)
    record = calibration_record(weights_sha256, {"Apple/1.jpg": "01" * 32}, {"preset": "performance"}, str(scratch))
    (scratch / CALIBRATION_JSON).write_text(json.dumps(record))
    return scratch.rename(parent / (name or f"int8-{record['model_id']}"))


def test_an_int8_model_goes_whole_under_models_with_its_name_and_checksums(s3, tmp_path):
    # GIVEN the folder `verger quantize` wrote
    folder = int8_folder(tmp_path)
    # WHEN it is staged
    staged = stage.stage_int8_model(s3, BUCKET, folder)
    # THEN its three files land under models/<folder name>/ byte for byte, each with its sha256, and
    # the URI is the one the stack builds from Int8ModelName (s3://BUCKET/models/<name>)
    assert staged.name == folder.name and stage.INT8_MODEL_NAME.fullmatch(staged.name)
    assert staged.uri == f"s3://{BUCKET}/models/{folder.name}"
    assert keys(s3) == {f"models/{folder.name}/{name}" for name in ("model.xml", "model.bin", "calibration.json")}
    for path in folder.iterdir():
        key = f"models/{folder.name}/{path.name}"
        assert body(s3, key) == path.read_bytes()
        assert s3.head_object(Bucket=BUCKET, Key=key)["Metadata"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_staged_int8_model_is_what_the_job_downloads_and_accepts(s3, tmp_path, monkeypatch):
    # GIVEN an int8 model staged into the bucket
    from emr_job.engines.int8_model import read_int8_model
    from emr_job.weights import resolve_int8_model

    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"the weights it was quantized from")
    folder = int8_folder(tmp_path, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    staged = stage.stage_int8_model(s3, BUCKET, folder)
    monkeypatch.setenv("VERGER_CACHE_DIR", str(tmp_path / "cache"))
    # WHEN the job resolves --int8-model at the URI the stack passes
    local = resolve_int8_model(staged.uri, "int8", weights_path=str(weights))
    # THEN it downloads the same model, whole and unaltered
    assert read_int8_model(local).model_id == folder.name.removeprefix("int8-")


@pytest.mark.parametrize("missing", ["model.xml", "model.bin", "calibration.json"])
def test_an_int8_folder_missing_a_file_is_refused_by_name_and_nothing_is_uploaded(s3, tmp_path, missing):
    folder = int8_folder(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(stage.StageError, match=f"lacks {missing}"):
        stage.stage_int8_model(s3, BUCKET, folder)
    assert keys(s3) == set()


@pytest.mark.parametrize("name", ["int8-tiny", "my-model", "int8-0A1B2C3D4E5F", "int8-0a1b2c3d4e5f0"])
def test_an_int8_folder_not_named_as_verger_quantize_names_it_is_refused(s3, tmp_path, name):
    folder = int8_folder(tmp_path, name)
    with pytest.raises(stage.StageError, match=r"not named int8-<12 hex digits>"):
        stage.stage_int8_model(s3, BUCKET, folder)
    assert keys(s3) == set()


def test_an_int8_folder_renamed_to_another_models_id_or_altered_is_refused(s3, tmp_path):
    # GIVEN a model folder renamed after another id, and one whose weights file changed after quantization
    (tmp_path / "renamed").mkdir()
    (tmp_path / "altered").mkdir()
    renamed = int8_folder(tmp_path / "renamed", "int8-0a1b2c3d4e5f")
    altered = int8_folder(tmp_path / "altered")
    (altered / "model.bin").write_bytes(b"changed")
    # WHEN / THEN neither is staged: the name would not be the model's id, or the job would refuse the files
    with pytest.raises(stage.StageError, match="holds model .*stage it under its own name"):
        stage.stage_int8_model(s3, BUCKET, renamed)
    with pytest.raises(stage.StageError, match="model.bin differs"):
        stage.stage_int8_model(s3, BUCKET, altered)
    assert keys(s3) == set()


def test_command_line_stages_the_int8_model_and_prints_its_uri_and_the_name_to_deploy_with(s3, project, tmp_path, capsys):
    # GIVEN an int8 model folder
    folder = int8_folder(tmp_path)
    # WHEN the command runs with --int8-model
    status = stage.main(["--bucket", BUCKET, "--project", str(project), "--int8-model", str(folder),
                         "--no-build-isolation"])
    # THEN it succeeds, prints each file, and says which Int8ModelName to deploy with
    printed = capsys.readouterr().out.splitlines()
    assert status == 0
    assert {f"s3://{BUCKET}/models/{folder.name}/{name}" for name in ("model.xml", "model.bin", "calibration.json")} <= {
        line.split()[0] for line in printed}
    assert printed[-1] == (f"int8 model staged at s3://{BUCKET}/models/{folder.name}: "
                           f"deploy with Precision=int8 Int8ModelName={folder.name}")


def test_command_line_refuses_a_bad_int8_folder_before_uploading_anything(s3, project, tmp_path, capsys):
    # GIVEN a model folder without its calibration record
    folder = int8_folder(tmp_path)
    (folder / "calibration.json").unlink()
    # WHEN the command runs  THEN it fails naming the file, and not even the code was staged
    status = stage.main(["--bucket", BUCKET, "--project", str(project), "--int8-model", str(folder),
                         "--no-build-isolation"])
    assert status == 1
    assert "lacks calibration.json" in capsys.readouterr().err
    assert keys(s3) == set()
