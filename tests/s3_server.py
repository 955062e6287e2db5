"""A real S3 API server on 127.0.0.1 for the tests and the cache benchmark: moto's server mode
(`moto[server]`, a dev dependency), started as a subprocess and stopped by its PID.

    with S3Server() as s3:                      # or the session fixture `s3_server` (tests/test_s3.py)
        s3.create_bucket("cache", versioned=True)
        env = s3.env()                          # AWS_ENDPOINT_URL + throwaway credentials
        s3.requests()                           # requests it answered so far (from its own log)
        s3.versions("cache", "prefix/")         # {key: number of PUTs} of a versioned bucket

Each request the server answers is one line of its log, so `requests()` counts round trips the
way the store sees them, with no client-side hook.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

ACCESS_KEY, SECRET_KEY, REGION = "testing-key", "testing-secret", "us-east-1"
_REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) ')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server on a free port of 127.0.0.1. `auth=True` enforces credentials from the first
    request on (no IAM user exists, so every access key is refused: the bad-credentials case)."""

    def __init__(self, auth: bool = False, startup_timeout: float = 60.0) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.auth = auth
        self.startup_timeout = startup_timeout
        self.log = Path(tempfile.mkstemp(prefix="moto-s3-", suffix=".log")[1])
        weakref.finalize(self, self.log.unlink, True)  # the log goes with the server object (or at exit)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server; RuntimeError (with its log's tail) when it does not answer in time."""
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        sink = open(self.log, "wb")  # noqa: SIM115 (the child holds it; closed on stop)
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        sink.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"moto's S3 server did not start on port {self.port}: {tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a client of this server needs (what a worker of a real cluster sets)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION, **extra}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def create_bucket(self, name: str, versioned: bool = False) -> str:
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def requests(self) -> int:
        """Requests the server has answered so far (one log line each)."""
        return len(_REQUEST.findall(self.log.read_text(errors="replace")))

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def versions(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """{key: how many times it was written} in a versioned bucket (deletions not counted)."""
        out: dict[str, int] = {}
        pages = self.client().get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for v in page.get("Versions", []):
                out[v["Key"]] = out.get(v["Key"], 0) + 1
        return out

    def upload_dir(self, local: Path, bucket: str, prefix: str) -> None:
        """Copy a local cache directory to s3://bucket/prefix/ (object keys = relative paths)."""
        client = self.client()
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


def reset_s3_clients() -> None:
    """Forget the s3fs clients and checked URLs of this process (after the environment changed)."""
    import s3fs

    from storage import cache, remote

    remote._close_clients()
    s3fs.S3FileSystem.clear_instance_cache()
    remote._checked.clear()
    cache._FIXED_GROUPS.clear()
