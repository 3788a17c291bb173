"""A real S3 endpoint for the object-storage tests: moto's standalone server on loopback.

As s3fs's and fsspec's own suites do, the server runs in a thread of the test process
(``ThreadedMotoServer``) and speaks real HTTP; our code reaches it through the usual AWS
variables (``AWS_ENDPOINT_URL``, keys, region), which also reach the subprocesses the tests
start (a live API server, Celery workers). Each test gets a bucket of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from phaseboard.server.settings import Settings
from tests.conftest import service_missing

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "phaseboard-test",
    "AWS_SECRET_ACCESS_KEY": "phaseboard-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Endpoint:
    """The moto server's URL and a boto3 client on it (to look at buckets directly)."""

    url: str
    client: Any

    def keys(self, bucket: str) -> list[str]:
        """Every object key in ``bucket`` (all pages)."""
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(keys)

    def blob_keys(self, bucket: str) -> list[str]:
        """Object keys that are blobs (not ``touched/`` markers)."""
        return [k for k in self.keys(bucket) if "/touched/" not in f"/{k}"]

    def multipart_uploads(self, bucket: str) -> list[str]:
        return [
            u["Key"] for u in self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        ]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - moto[server] is a test dependency
        service_missing("moto's S3 server", str(exc))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_ENV["AWS_REGION"],
    )
    try:
        yield S3Endpoint(url, client)
    finally:
        server.stop()


@pytest.fixture
def aws_env(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS variables pointing at the moto server, set for this test (and its children)."""
    env = {**AWS_ENV, "AWS_ENDPOINT_URL": s3_endpoint.url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def bucket(s3_endpoint: S3Endpoint, aws_env: dict[str, str]) -> str:
    name = f"pb-{uuid.uuid4().hex[:12]}"
    s3_endpoint.client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(make_settings, bucket: str) -> Settings:  # type: ignore[no-untyped-def]
    """Settings whose blobs live in the test's bucket under the prefix ``blobs``."""
    return make_settings(blob_url=f"s3://{bucket}/blobs")
