"""A real S3-compatible server for tests: moto's server mode (HTTP on a free loopback port), one bucket per use."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import SecretStr

from shared.config.settings import Settings
from shared.runtime.embedded import free_port

ACCESS_KEY, SECRET_KEY, REGION = "testing", "testing", "us-east-1"


class MotoS3:
    """moto's ThreadedMotoServer: a real HTTP S3 endpoint that worker subprocesses can reach too."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def __enter__(self) -> MotoS3:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def client(self) -> Any:
        """A boto3 S3 client on this server (for making buckets and looking at objects directly)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket."""
        name = f"inferq-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix`, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def settings(self, base: Settings, bucket: str, prefix: str = "inferq") -> Settings:
        """`base` with storage pointed at s3://bucket/prefix on this server."""
        return base.model_copy(update=self.overrides(bucket, prefix))

    def overrides(self, bucket: str, prefix: str = "inferq") -> dict[str, Any]:
        """The settings that point storage at s3://bucket/prefix on this server."""
        return {
            "storage_url": f"s3://{bucket}/{prefix}",
            "s3_endpoint_url": self.endpoint,
            "s3_region": REGION,
            "s3_access_key_id": ACCESS_KEY,
            "s3_secret_access_key": SecretStr(SECRET_KEY),
        }

    def env(self, bucket: str, prefix: str = "inferq") -> dict[str, str]:
        """The INFERQ_* environment that points a child process's storage at s3://bucket/prefix."""
        return {
            "INFERQ_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "INFERQ_S3_ENDPOINT_URL": self.endpoint,
            "INFERQ_S3_REGION": REGION,
            "INFERQ_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "INFERQ_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }
