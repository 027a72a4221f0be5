"""An in-process S3 (moto) for the job's unit tests, with the job's cached clients reset around it."""
import boto3
import pytest
from moto import mock_aws

from emr_job import blobs, fetch

BUCKET = "verger-test"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A client on a fresh moto S3 holding one empty bucket named BUCKET."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("VERGER_CACHE_DIR", str(tmp_path / "cache"))
    with mock_aws():
        fetch.s3_client.cache_clear()
        blobs.s3.cache_clear()
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
        yield client
    fetch.s3_client.cache_clear()
    blobs.s3.cache_clear()
