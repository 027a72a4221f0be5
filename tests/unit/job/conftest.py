"""An in-process S3 (moto) for the job's unit tests, with the job's cached clients reset around it;
hostile images built on the fly."""
import struct
import urllib.request
import zlib

import boto3
import pytest
from moto import mock_aws
from pyarrow import fs

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


@pytest.fixture(params=["local", "glue"])
def warehouse(request, tmp_path, monkeypatch):
    """A warehouse URI, and the pyarrow filesystem and base path its files live under."""
    if request.param == "local":
        yield str(tmp_path / "wh"), fs.LocalFileSystem(), str(tmp_path / "wh")
        return
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-3", "AWS_REGION": "eu-west-3"}.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")  # moto's state is process-wide
    urllib.request.urlopen(reset)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("PYICEBERG_CATALOG__VERGER__TYPE", "glue")  # what the template's spark-env sets
    monkeypatch.setenv("PYICEBERG_CATALOG__VERGER__GLUE__ENDPOINT", endpoint)
    monkeypatch.setenv("PYICEBERG_CATALOG__VERGER__S3__ENDPOINT", endpoint)
    boto3.client("s3").create_bucket(Bucket="verger-wh", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    blobs.s3.cache_clear()
    yield "s3://verger-wh/warehouse", fs.S3FileSystem(endpoint_override=endpoint, region="eu-west-3"), "verger-wh/warehouse"
    urllib.request.urlopen(reset)  # leave no Glue database behind for the next test's moto
    server.stop()
    blobs.s3.cache_clear()


# ---------------------------------------------------------------- hostile images, built here
PNG_GRAY, PNG_RGBA = 0, 6  # PNG colour types
PNG_SAMPLES = {PNG_GRAY: 1, PNG_RGBA: 4}


def black_png(width: int, height: int, color_type: int = PNG_GRAY, bit_depth: int = 16) -> bytes:
    """A valid all-black PNG, compressed a block of rows at a time, so that one just under PIL's
    pixel limit (170 KiB as 16-bit gray, 340 KiB as RGBA) costs a few MiB to build, not gigabytes."""
    row = bytes(1 + width * PNG_SAMPLES[color_type] * bit_depth // 8)  # filter byte 0, then zeros
    compressor = zlib.compressobj(9)
    data = bytearray()
    for start in range(0, height, 256):
        data += compressor.compress(row * min(256, height - start))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", bytes(data)) + png_chunk(b"IEND", b"")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.fixture(scope="session")
def crafted_png():
    return black_png
