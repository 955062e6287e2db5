"""The cache on an object store (s3://, gs://, az://, ... any fsspec URL whose package is installed).

What the rest of storage/ gets from here: `open_remote_store(url)`, a zarr FsspecStore whose first
contact with the store has been checked, so a wrong URL fails at once in one line (a CacheError,
exit 5) instead of somewhere inside zarr with a traceback or after minutes of retries.

Why an object store needs nothing else from the cache code (see docs/cache.md, "On an object
store"): every object is written by one PUT, which is atomic (readers see the old object or the new
one, never half of one), so zarr's chunk writes need no temporary file and rename; S3's reads are
strongly consistent after writes (since 2020; MinIO and Ceph too); the cache takes no locks (one
chunk per frame, disjoint writers) and reads no modification times.

S3 specifics:
- Credentials, region and endpoint come from the standard AWS environment and config files
  (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, ~/.aws/config,
  instance roles; AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3 for MinIO, Ceph and other S3-compatible
  stores). Nothing here reads or stores a credential.
- Listings are never cached (`use_listings_cache=False`): other workers add tables and jobs while a
  process runs, and s3fs's listing cache never expires by default.
- Retries and timeouts are bounded (`S3_CONFIG`) unless the user's AWS_MAX_ATTEMPTS / AWS_RETRY_MODE
  say otherwise, so an unreachable endpoint answers in seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any
from urllib.parse import urlsplit

from zarr.storage import FsspecStore

from storage.errors import CacheError

__all__ = ["S3_CONFIG", "cache_exists", "is_remote", "is_store_error", "open_remote_store", "remote_problem",
           "storage_options"]

# botocore's client config for the cache: a short connect timeout and few attempts (the "standard"
# retry mode backs off on throttling, 503 SlowDown, and connection errors). Each default once, here.
S3_CONFIG: dict[str, Any] = {"connect_timeout": 3, "read_timeout": 60,
                             "retries": {"max_attempts": 3, "mode": "standard"}}
S3FS_RETRIES = 1
S3_PROTOCOLS = ("s3", "s3a")
# Packages that provide the common fsspec protocols (for the one-line error when one is missing).
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
             "abfss": "adlfs"}
# URLs whose first contact was checked in this process: a worker opens the cache once per task, and
# the check (one LIST) is paid once per process.
_checked: set[str] = set()


def is_remote(url: str) -> bool:
    """True for an fsspec URL other than file:// (the cache is then not a local directory)."""
    text = str(url)
    return "://" in text and not text.startswith("file://")


def storage_options(protocol: str) -> dict[str, Any]:
    """The fsspec options the cache opens a store of `protocol` with."""
    if protocol not in S3_PROTOCOLS:
        return {}
    config = dict(S3_CONFIG)
    if os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE"):
        config.pop("retries")  # the user's choice (botocore reads these variables itself)
    # max_concurrency 1: s3fs reads an object in concurrent ranges only after a HEAD for its size
    # (and, when it is missing, a LIST); the cache's objects are small (a frame's chunk), so one GET.
    return {"use_listings_cache": False, "config_kwargs": config, "max_concurrency": 1}


def open_remote_store(url: str) -> FsspecStore:
    """A zarr store for an fsspec URL, checked: the bucket (or container) exists and can be listed
    with these credentials, the endpoint answers, and the prefix is a facereenact cache or empty.
    Any problem is a one-line CacheError naming the URL (exit 5)."""
    parts = urlsplit(url)
    protocol = parts.scheme
    if protocol in S3_PROTOCOLS and not parts.netloc:
        raise CacheError("no bucket in the URL; use s3://BUCKET/PREFIX", path=url)
    try:
        store = FsspecStore.from_url(url, storage_options=storage_options(protocol))
    except ImportError:
        package = _PACKAGES.get(protocol, f"the fsspec package for {protocol}://")
        raise CacheError(f"this cache URL needs {package} (pip install {package})", path=url) from None
    except ValueError as err:
        raise CacheError(f"cannot open the cache URL ({err})", path=url) from None
    if hasattr(store.fs, "retries"):
        # s3fs retries some errors itself, each time with all of botocore's attempts: once is enough.
        store.fs.retries = S3FS_RETRIES
    if url not in _checked:
        _check(store, url)
        _checked.add(url)
    _close_at_exit(store.fs)
    return store


_to_close: list[Any] = []
_close_registered = False


def _close_at_exit(fs: Any) -> None:
    """Close the store's client when the process ends: its HTTP session is otherwise garbage
    collected open, and asyncio logs "Unclosed client session" errors after the command's output."""
    global _close_registered
    if any(f is fs for f in _to_close):
        return
    if not _close_registered:
        import atexit

        atexit.register(_close_clients)  # after zarr's own atexit hook: runs before it (LIFO)
        _close_registered = True
    _to_close.append(fs)


def _close_clients() -> None:
    from zarr.core.sync import sync

    while _to_close:
        client = getattr(_to_close.pop(), "_s3", None)
        if client is not None:
            with contextlib.suppress(Exception):  # best effort at exit
                sync(client.__aexit__(None, None, None), timeout=2)


def _check(store: FsspecStore, url: str) -> None:
    """One request that proves the store usable (LIST of the prefix), plus one HEAD when the prefix
    holds objects: a prefix with other files and no facereenact root is refused, never adopted."""
    from zarr.core.sync import sync  # the store's file system is async, on zarr's event loop

    fs, root = store.fs, store.path.rstrip("/")
    try:
        if set(_protocols(fs)) & set(S3_PROTOCOLS):
            bucket, _, prefix = root.partition("/")
            listed = sync(fs._call_s3("list_objects_v2", Bucket=bucket, MaxKeys=1,
                                      Prefix=f"{prefix}/" if prefix else ""))
            holds_objects = bool(listed.get("KeyCount") or listed.get("Contents"))
        else:
            holds_objects = bool(sync(fs._exists(root)) and sync(fs._ls(root, detail=False)))
        if holds_objects and not sync(fs._exists(f"{root}/zarr.json")):
            raise CacheError("holds other files and no facereenact cache; choose a new or empty prefix",
                             path=url)
    except (CacheError, TypeError, AttributeError, NameError):
        raise  # ours, or a bug (keeps its traceback)
    except Exception as err:  # noqa: BLE001 (every failure of the first contact is the user's to fix)
        raise CacheError(remote_problem(err), path=url) from None


def _protocols(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def is_store_error(err: BaseException) -> bool:
    """An error of the object store or the way to it (not a bug of ours): an OSError (s3fs turns the
    store's answers into those), or an error of botocore, aiobotocore or aiohttp."""
    if isinstance(err, OSError):
        return True
    return any(cls.__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp")
               for cls in type(err).__mro__)


def remote_problem(err: BaseException) -> str:
    """What went wrong talking to an object store, in words a user can act on."""
    text = " ".join(str(err).split())[:300]
    name = type(err).__name__
    lowered = text.lower()
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or (
            isinstance(err, FileNotFoundError) and "bucket" in lowered):
        return f"the bucket does not exist ({text}); create it or fix the URL"
    if isinstance(err, FileNotFoundError):
        return f"the bucket or path does not exist ({text}); create it or fix the URL"
    if isinstance(err, PermissionError) or any(k in lowered for k in (
            "invalidaccesskeyid", "signaturedoesnotmatch", "access denied", "accessdenied", "forbidden",
            "expiredtoken", "invalidtoken")):
        return (f"access denied: the credentials were refused or lack permission ({text}); check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE")
    if "nocredentials" in name.lower() or "unable to locate credentials" in lowered:
        return "no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    if any(k in name.lower() or k in lowered for k in (
            "endpointconnection", "connecttimeout", "connectionerror", "could not connect",
            "connection refused", "timeout", "name or service not known", "cannot connect")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        where = f" {endpoint}" if endpoint else ""
        return f"cannot reach the object store endpoint{where} ({name}: {text}); check AWS_ENDPOINT_URL"
    return f"cannot use the object store ({name}: {text})"


def cache_exists(url: str) -> bool:
    """Whether a cache is there already (a local directory, or a root group under an fsspec URL):
    commands that only read (status, resume, train-mapping) refuse a missing one rather than make an
    empty cache. An unusable URL is a CacheError, as for any command."""
    from pathlib import Path

    text = str(url)
    if not is_remote(text):
        return Path(text.removeprefix("file://")).expanduser().exists()
    from zarr.core.sync import sync

    store = open_remote_store(text)
    try:
        return bool(sync(store.exists("zarr.json")))
    except Exception as err:  # noqa: BLE001 (the store failed after its first check: still the user's)
        raise CacheError(remote_problem(err), path=text) from None
