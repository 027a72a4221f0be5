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
