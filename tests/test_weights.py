"""Weights: registry, fetch (resume, verify, atomic landing, lock), verify, and the CLI.

Every download here comes from a local HTTP server started by the test (127.0.0.1, port 0) whose
misbehaviours the test chooses; nothing touches the internet.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from storage import weights
from storage.errors import CheckpointError, WeightsMissingError
from storage.weights import REGISTRY, WeightSpec, fetch, verify
from tests.helpers import REPO_ROOT, assert_user_error

# -- a local server whose misbehaviours the tests choose -----------------------------------------


@dataclass
class ServerState:
    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False  # answer every request with the whole file (200)
    send_validator: bool = True  # send an ETag
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> next response stops after N bytes
    seconds_per_chunk: float = 0.0
    requests: list[dict] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path

    def gets(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


class Handler(BaseHTTPRequestHandler):
    CHUNK = 64 * 1024

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        record = {"path": self.path, "range": self.headers.get("Range"),
                  "if_range": self.headers.get("If-Range"), "status": None, "sent": 0}
        state.requests.append(record)
        body = state.files.get(self.path)
        if body is None:
            record["status"] = 404
            self.send_error(404)
            return
        etag = etag_of(body)
        start, status = 0, 200
        wanted = re.fullmatch(r"bytes=(\d+)-", record["range"] or "")
        if wanted and not state.ignore_range and record["if_range"] in (None, etag):
            start, status = int(wanted.group(1)), 206
            if start >= len(body):
                record["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        payload = body[start:]
        record["status"] = status
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        if state.send_validator:
            self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        limit = state.drop_after.pop(self.path, None)
        payload = payload if limit is None else payload[:limit]
        try:
            for i in range(0, len(payload), self.CHUNK):
                piece = payload[i:i + self.CHUNK]
                self.wfile.write(piece)
                record["sent"] += len(piece)
                if state.seconds_per_chunk:
                    time.sleep(state.seconds_per_chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up (it refused the offer): fine
        self.close_connection = True  # with `limit`, the client sees the connection close early


@pytest.fixture
def server():
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def no_url_overrides(monkeypatch):
    """The user's mirror settings must not leak into these tests."""
    for key in list(os.environ):
        if key.startswith(weights.URL_ENV_PREFIX) or key == weights.MIRROR_ENV:
            monkeypatch.delenv(key)


def payload(n: int = 3 * 2**20 + 12345, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve(state: ServerState, data: bytes, path: str = "/tiny.bin", **spec_fields) -> WeightSpec:
    """Serve `data` at `path`; a spec pinned to it (override any field)."""
    state.files[path] = data
    fields = dict(name="tiny", filename="tiny-weights.bin", url=state.url(path), size=len(data),
                  sha256=sha(data), kind="test", note="test file")
    fields.update(spec_fields)
    return WeightSpec(**fields)


def leftovers(directory: Path) -> list[str]:
    """Files in a fetch directory other than the lock (which stays, by design)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- fetch ----------------------------------------------------------------------------------------


def test_fetch_verifies_and_lands_only_the_final_file(server, tmp_path):
    data = payload()
    spec = serve(server, data)

    path = fetch(spec, dest_dir=tmp_path, quiet=True)

    assert path == tmp_path / spec.filename
    assert path.read_bytes() == data
    assert leftovers(tmp_path) == [spec.filename]  # no .part, no .part.json
    assert verify(path, spec).status == "ok"
    # Already there and verified: returned without a request.
    requests = len(server.requests)
    assert fetch(spec, dest_dir=tmp_path, quiet=True) == path
    assert len(server.requests) == requests


def test_corrupted_download_is_removed_with_a_one_line_error(server, tmp_path):
    data = payload()
    spec = serve(server, data)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    server.files["/tiny.bin"] = bytes(bad)

    with pytest.raises(CheckpointError) as err:
        fetch(spec, dest_dir=tmp_path, quiet=True)

    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / spec.filename) in message
    assert f"expected {sha(data)}, got {sha(bytes(bad))}" in message
    assert leftovers(tmp_path) == []  # nothing at the final path, no .part to resume from


def test_wrong_size_on_offer_is_refused_before_downloading(server, tmp_path):
    data = payload()
    spec = serve(server, data)
    server.files["/tiny.bin"] = data[:-100]

    with pytest.raises(CheckpointError, match=rf"expected {len(data)} bytes, .* offers {len(data) - 100}"):
        fetch(spec, dest_dir=tmp_path, quiet=True)
    assert leftovers(tmp_path) == []


def test_interrupted_download_resumes_with_range_and_transfers_the_file_once(server, tmp_path):
    data = payload()
    spec = serve(server, data)
    half = len(data) // 2
    server.drop_after["/tiny.bin"] = half

    with pytest.raises(WeightsMissingError, match=rf"interrupted after {half} of {len(data)} bytes.*resume"):
        fetch(spec, dest_dir=tmp_path, quiet=True)
    part = tmp_path / (spec.filename + ".part")
    assert not (tmp_path / spec.filename).exists()
    assert part.read_bytes() == data[:half]  # what arrived is kept: a correct prefix

    path = fetch(spec, dest_dir=tmp_path, quiet=True)

    assert path.read_bytes() == data and verify(path, spec).ok
    first, second = server.requests
    assert first["range"] is None
    assert second["range"] == f"bytes={half}-" and second["status"] == 206
    assert second["if_range"] == etag_of(data)
    assert sum(r["sent"] for r in server.requests) == len(data)  # not twice
    assert leftovers(tmp_path) == [spec.filename]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, capsys):
    data = payload()
    spec = serve(server, data)
    server.drop_after["/tiny.bin"] = len(data) // 3
    with pytest.raises(WeightsMissingError):
        fetch(spec, dest_dir=tmp_path, quiet=True)
    server.ignore_range = True

    path = fetch(spec, dest_dir=tmp_path)

    assert path.read_bytes() == data
    second = server.requests[1]
    assert second["range"] is not None and second["status"] == 200
    assert "restarting tiny-weights.bin from byte 0" in capsys.readouterr().err


def test_file_changed_on_server_restarts_instead_of_splicing(server, tmp_path):
    old, new = payload(seed=1), payload(seed=2)
    spec = serve(server, old)
    server.drop_after["/tiny.bin"] = len(old) // 2
    with pytest.raises(WeightsMissingError):
        fetch(spec, dest_dir=tmp_path, quiet=True)
    # The mirror now has another file under the same URL (its ETag changed).
    server.files["/tiny.bin"] = new
    spec = replace(spec, sha256=sha(new), size=len(new))

    path = fetch(spec, dest_dir=tmp_path, quiet=True)

    assert path.read_bytes() == new
    assert server.requests[1]["if_range"] == etag_of(old) and server.requests[1]["status"] == 200


def test_resumed_download_that_fails_verification_starts_over_once(server, tmp_path):
    data = payload()
    spec = serve(server, data)
    half = len(data) // 2
    server.drop_after["/tiny.bin"] = half
    with pytest.raises(WeightsMissingError):
        fetch(spec, dest_dir=tmp_path, quiet=True)
    part = tmp_path / (spec.filename + ".part")
    damaged = bytearray(part.read_bytes())
    damaged[10] ^= 0xFF  # the disk, not the server, damaged the kept prefix
    part.write_bytes(bytes(damaged))

    path = fetch(spec, dest_dir=tmp_path, quiet=True)

    assert path.read_bytes() == data
    assert [(r["range"], r["status"]) for r in server.requests[1:]] == [(f"bytes={half}-", 206), (None, 200)]


def test_range_past_the_end_416(server, tmp_path):
    """A `.part` that is already whole (crash before the rename) completes from the 416 answer; one
    longer than the file on the server (it shrank) starts over."""
    data = payload(100_000)
    spec = serve(server, data, size=None, sha256=None)  # nothing known, so the server decides
    part = tmp_path / (spec.filename + ".part")
    meta = tmp_path / (spec.filename + ".part.json")
    part.write_bytes(data)
    meta.write_text(json.dumps({"url": spec.url, "etag": etag_of(data)}))

    assert fetch(spec, dest_dir=tmp_path, quiet=True).read_bytes() == data
    seen = [(r["range"], r["status"], r["sent"]) for r in server.requests]
    assert seen == [(f"bytes={len(data)}-", 416, 0)]

    (tmp_path / spec.filename).unlink()
    weights.record_path(tmp_path / spec.filename).unlink()
    part.write_bytes(data + b"stale tail")
    meta.write_text(json.dumps({"url": spec.url, "etag": etag_of(data)}))
    assert fetch(spec, dest_dir=tmp_path, quiet=True).read_bytes() == data
    assert [(r["range"], r["status"]) for r in server.requests[1:]] == [(f"bytes={len(data) + 10}-", 416),
                                                                       (None, 200)]


def test_http_404_is_a_one_line_missing_weight_error(server, tmp_path):
    spec = serve(server, payload(1000), url=server.url("/nothing-here.bin"))

    with pytest.raises(WeightsMissingError) as err:
        fetch(spec, dest_dir=tmp_path, quiet=True)

    message = str(err.value)
    assert "\n" not in message and "HTTP 404" in message and "/nothing-here.bin" in message
    assert spec.url_env_var in message  # says how to point elsewhere
    assert leftovers(tmp_path) == []


def test_connection_refused_says_offline_and_where_to_put_the_file(tmp_path):
    spec = WeightSpec(name="tiny", filename="tiny-weights.bin", url=f"http://127.0.0.1:{closed_port()}/x",
                      size=10, sha256="0" * 64, kind="test")

    with pytest.raises(WeightsMissingError) as err:
        fetch(spec, dest_dir=tmp_path, quiet=True)

    message = str(err.value)
    assert "\n" not in message and "refused" in message.lower()
    assert str(tmp_path / spec.filename) in message and weights.MIRROR_ENV in message
    assert leftovers(tmp_path) == []


def test_unpinned_weight_records_its_digest_and_is_checked_against_it(server, tmp_path, capsys):
    data = payload(200_000)
    spec = serve(server, data, size=None, sha256=None)

    path = fetch(spec, dest_dir=tmp_path)

    assert sha(data) in capsys.readouterr().err  # printed for the user
    record = weights.record_path(path)
    assert record.read_text() == f"{sha(data)}  {spec.filename}\n"  # sha256sum -c format
    assert verify(path, spec).status == "recorded"
    # Damage to the file is now detected...
    path.write_bytes(data + b"x")
    assert verify(path, spec).status == "mismatch"
    # ...and a fetch replaces the damaged file with one that matches the record.
    assert fetch(spec, dest_dir=tmp_path, quiet=True).read_bytes() == data
    # Another file at the URL is refused, with the way to accept it.
    path.unlink()
    server.files["/tiny.bin"] = payload(200_000, seed=9)
    with pytest.raises(CheckpointError, match=r"recorded at its first fetch.*delete .*\.sha256"):
        fetch(spec, dest_dir=tmp_path, quiet=True)
    assert not path.exists()


def test_unpinned_download_without_validator_does_not_resume(server, tmp_path):
    """Nothing could tell a spliced file from a good one, so it starts over instead."""
    data = payload()
    spec = serve(server, data, size=None, sha256=None)
    server.send_validator = False
    server.drop_after["/tiny.bin"] = len(data) // 2
    with pytest.raises(WeightsMissingError):
        fetch(spec, dest_dir=tmp_path, quiet=True)

    assert fetch(spec, dest_dir=tmp_path, quiet=True).read_bytes() == data
    assert server.requests[1]["range"] is None


def test_torch_hub_file_name_prefix_is_checked(server, tmp_path):
    data = payload(50_000)
    good = serve(server, data, filename=f"tinynet-{sha(data)[:8]}.pth", sha256=None,
                 location=weights.TORCH_HUB_LOCATION)
    assert good.sha256_prefix == sha(data)[:8]
    assert verify(fetch(good, dest_dir=tmp_path, quiet=True), good).status == "prefix"

    bad = replace(good, filename="tinynet-00000000.pth")
    with pytest.raises(CheckpointError, match="expected a digest starting 00000000"):
        fetch(bad, dest_dir=tmp_path, quiet=True)
    assert not (tmp_path / bad.filename).exists()


def test_torch_hub_weights_land_where_torch_hub_loads_them(server, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert weights.torch_hub_checkpoints_dir() == Path(torch.hub.get_dir()) / "checkpoints"
    assert weights.default_dir(REGISTRY["lpips-alexnet"]) == weights.torch_hub_checkpoints_dir()
    blob = tmp_path / "blob.pth"
    torch.save({"weight": torch.arange(6.0).reshape(2, 3)}, blob)
    data = blob.read_bytes()
    spec = serve(server, data, filename=f"tinynet-{sha(data)[:8]}.pth",
                 location=weights.TORCH_HUB_LOCATION)

    path = fetch(spec, quiet=True)  # default directory for a torch-hub weight

    assert path.parent == weights.torch_hub_checkpoints_dir()
    # torch.hub finds it by file name (an unreachable URL proves it does not download), hash checked.
    unreachable = f"http://127.0.0.1:{closed_port()}/{spec.filename}"
    state = torch.hub.load_state_dict_from_url(unreachable, check_hash=True, progress=False)
    assert torch.equal(state["weight"], torch.arange(6.0).reshape(2, 3))


def test_second_fetch_waits_for_the_lock(server, tmp_path):
    data = payload()
    spec = serve(server, data)
    lock = tmp_path / (spec.filename + ".lock")
    result: dict = {}
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        thread = threading.Thread(target=lambda: result.update(path=fetch(spec, dest_dir=tmp_path,
                                                                           quiet=True)))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and server.requests == []  # waiting, not downloading
        fcntl.flock(held, fcntl.LOCK_UN)
    thread.join(30)
    assert result["path"].read_bytes() == data


def test_two_processes_fetching_one_weight_download_it_once(server, tmp_path):
    """Two `facereenact weights fetch` at once: one downloads, the other waits and finds it; the
    final path never shows a partial file."""
    data = payload(3 * 2**20)
    server.files["/w.pkl"] = data
    server.seconds_per_chunk = 0.05  # ~2.4 s for the whole file
    env = {"FACEREENACT_WEIGHTS_URL_FFHQ_256": server.url("/w.pkl")}
    final = tmp_path / REGISTRY["ffhq-256"].filename
    command = [sys.executable, "-m", "flows.cli", "weights", "fetch", "ffhq-256", "--dir", str(tmp_path)]

    def start():
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)})

    first = start()
    deadline = time.monotonic() + 30
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    second = start()
    sizes_seen = set()
    while first.poll() is None or second.poll() is None:
        if final.exists():
            sizes_seen.add(final.stat().st_size)
        time.sleep(0.01)
        assert time.monotonic() < deadline + 30
    outputs = [p.communicate() for p in (first, second)]

    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [str(final)] * 2
    assert len(server.gets("/w.pkl")) == 1
    assert "waiting for another process" in outputs[1][1]
    assert sizes_seen <= {len(data)}
    assert final.read_bytes() == data and weights.read_record(final) == sha(data)


# -- verify, require, registry --------------------------------------------------------------------


def test_verify_reports_size_and_sha_mismatch_in_one_line(tmp_path):
    data = payload(5000)
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    spec = WeightSpec(name="w", filename="w.bin", url="http://unused", size=len(data), sha256=sha(data),
                      kind="test")
    assert verify(path, spec).ok
    wrong_size = verify(path, replace(spec, size=len(data) + 1))
    assert not wrong_size.ok and wrong_size.message == (
        f"{path}: size mismatch: expected {len(data) + 1} bytes, got {len(data)}")
    wrong_sha = verify(path, replace(spec, sha256="ab" * 32))
    assert not wrong_sha.ok and f"expected {'ab' * 32}, got {sha(data)}" in wrong_sha.message
    assert verify(tmp_path / "nope.bin", spec).status == "missing"
    unknown = verify(path)  # no registry entry named w.bin
    assert unknown.status == "unpinned" and sha(data) in unknown.message


def test_require_names_file_place_and_fetch_command_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREENACT_HOME", str(tmp_path))
    with pytest.raises(WeightsMissingError) as err:
        weights.require("ffhq-1024")
    message = str(err.value)
    assert "stylegan2-ada-pytorch-ffhq.pkl" in message and str(tmp_path / "weights") in message
    assert "facereenact weights fetch ffhq-1024" in message and "\n" not in message
    with pytest.raises(WeightsMissingError, match="unknown weight name 'ffhq-2048'"):
        weights.require("ffhq-2048")
    # A truncated copy is not handed to a loader.
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "stylegan2-ada-pytorch-ffhq.pkl").write_bytes(b"\x80\x04truncated")
    with pytest.raises(CheckpointError, match="size mismatch: expected 381624121 bytes, got 11"):
        weights.require("ffhq-1024")


def test_registry_entries_are_consistent():
    assert {"ffhq-1024", "ffhq-512", "ffhq-256", "fan-2d", "lpips-alexnet", "lpips-vgg16"} <= set(REGISTRY)
    assert len({s.filename for s in REGISTRY.values()}) == len(REGISTRY)
    for spec in REGISTRY.values():
        assert spec.url.startswith("https://") and spec.note, spec.name
        assert spec.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        if spec.sha256 and spec.sha256_prefix:  # torch.hub names carry the digest's first hex digits
            assert spec.sha256.startswith(spec.sha256_prefix), spec.name
    assert REGISTRY["ffhq-1024"].size == 381_624_121
    assert REGISTRY["lpips-alexnet"].sha256_prefix == "7be5be79"
    assert REGISTRY["fan-2d"].sha256_prefix == "11f355bf06"
    hub = {s.name for s in REGISTRY.values() if s.location == weights.TORCH_HUB_LOCATION}
    assert hub == {"fan-2d", "fan-s3fd", "lpips-alexnet", "lpips-vgg16"}


def test_url_overrides(monkeypatch):
    spec = REGISTRY["ffhq-1024"]
    assert weights.resolve_url(spec) == spec.url
    monkeypatch.setenv(weights.MIRROR_ENV, "http://mirror.local/weights/")
    assert weights.resolve_url(spec) == "http://mirror.local/weights/stylegan2-ada-pytorch-ffhq.pkl"
    monkeypatch.setenv("FACEREENACT_WEIGHTS_URL_FFHQ_1024", "http://other.local/ffhq.pkl")
    assert spec.url_env_var == "FACEREENACT_WEIGHTS_URL_FFHQ_1024"
    assert weights.resolve_url(spec) == "http://other.local/ffhq.pkl"
    assert weights.resolve_url(spec, url="http://given.local/f.pkl") == "http://given.local/f.pkl"


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_verify_missing_weight_offline(run_cli, tmp_path):
    proc = run_cli("weights", "verify", "ffhq-1024", env={"FACEREENACT_HOME": str(tmp_path)})
    assert_user_error(proc, "stylegan2-ada-pytorch-ffhq.pkl", str(tmp_path / "weights"),
                      "facereenact weights fetch ffhq-1024", code=4)


def test_cli_fetch_offline_is_one_line_exit_4(run_cli, tmp_path):
    env = {"FACEREENACT_HOME": str(tmp_path), weights.MIRROR_ENV: f"http://127.0.0.1:{closed_port()}"}
    proc = run_cli("weights", "fetch", "ffhq-1024", env=env)
    assert_user_error(proc, "ffhq-1024", "refused", "offline", code=4)
    assert leftovers(tmp_path / "weights") == []


def test_cli_fetch_from_mirror_with_wrong_file_is_refused(run_cli, server, tmp_path):
    server.files["/stylegan2-ada-pytorch-ffhq.pkl"] = payload(1000)
    proc = run_cli("weights", "fetch", "ffhq-1024", "--dir", tmp_path, env={weights.MIRROR_ENV: server.base})
    assert_user_error(proc, "stylegan2-ada-pytorch-ffhq.pkl", "expected 381624121 bytes", code=3)
    assert leftovers(tmp_path) == []


def test_cli_fetch_list_verify(cli, server, tmp_path):
    # In this process (flows.cli.main): the entry point in a fresh process is the tests above.
    data = payload(300_000)
    server.files["/w.pkl"] = data
    env = {"FACEREENACT_HOME": str(tmp_path), "FACEREENACT_WEIGHTS_URL_FFHQ_256": server.url("/w.pkl")}
    final = tmp_path / "weights" / REGISTRY["ffhq-256"].filename

    listed = cli("weights", "list", env=env, check=True).stdout
    assert re.search(r"^ffhq-256 .*missing", listed, re.M) and "lpips-vgg16" in listed

    fetched = cli("weights", "fetch", "ffhq-256", env=env, check=True)
    assert fetched.stdout.strip() == str(final) and final.read_bytes() == data
    assert sha(data) in fetched.stderr  # the digest it saw, for an unpinned entry

    listed = cli("weights", "list", env=env, check=True).stdout
    assert re.search(rf"^ffhq-256 .*recorded\s+{re.escape(str(final))}$", listed, re.M)
    by_name = cli("weights", "verify", "ffhq-256", env=env, check=True).stdout
    by_path = cli("weights", "verify", final, env=env, check=True).stdout
    assert by_name == by_path and sha(data) in by_name and "OK" in by_name

    final.write_bytes(data[:-1] + b"\0")
    assert_user_error(cli("weights", "verify", final, env=env), str(final), "sha256 mismatch", code=3)
    assert_user_error(cli("weights", "verify", tmp_path / "nope.pkl", env=env), "nope.pkl",
                      "no such file", code=2)
    assert_user_error(cli("weights", "fetch", "ffhq-2048", env=env), "unknown weight name", code=4)


def test_cli_convert(cli, stylegan_fixture_dir, tmp_path):
    try:
        from models.checkpoints import convert_checkpoint  # noqa: F401
    except ImportError:
        pytest.skip("models.checkpoints.convert_checkpoint has not landed yet (branch gen)")
    src = stylegan_fixture_dir / "sg2_tiny64.pkl"
    dst = tmp_path / "tiny64.converted"
    proc = cli("weights", "convert", src, dst, check=True)
    assert proc.stdout.strip() == str(dst)
    assert dst.is_file() and dst.stat().st_size > 0 and dst.read_bytes() != src.read_bytes()

    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    assert_user_error(cli("weights", "convert", garbage, tmp_path / "out"), "garbage.pkl", code=3)
    assert_user_error(cli("weights", "convert", tmp_path / "absent.pkl", tmp_path / "out"),
                      "absent.pkl", code=2)


def test_damaged_part_metadata_means_starting_over(tmp_path):
    """`.part.json` says which URL and validator the kept bytes belong to; unreadable, it is ignored."""
    spec = WeightSpec(name="w", filename="w.bin", url="http://127.0.0.1:1/w", size=None, sha256=None,
                      kind="test")
    (tmp_path / "w.bin.part").write_bytes(b"abc")
    (tmp_path / "w.bin.part.json").write_text("{not json")
    download = weights._Download(spec, spec.url, tmp_path / "w.bin", verifiable=False, progress=False,
                                 quiet=True)
    assert download._resumable() == (0, {})
    (tmp_path / "w.bin.part.json").write_text(json.dumps({"url": spec.url, "etag": '"e"'}))
    assert download._resumable() == (3, {"url": spec.url, "etag": '"e"'})
    (tmp_path / "w.bin.part.json").write_text(json.dumps({"url": "http://elsewhere/w", "etag": '"e"'}))
    assert download._resumable() == (0, {})
