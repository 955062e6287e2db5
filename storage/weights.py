"""Named official weights: where they come from, where they live on disk, how to get them.

This module is the one place that knows weight files: the registry (name -> URL, size, sha256), the
directories they live in, the error for a missing weight, and fetching (resumable, verified,
atomic) and verifying them. docs/weights.md has the registry with the source of every number.

Two homes, because other libraries look for some of these files themselves:
- "weights": $FACEREENACT_HOME/weights (default ~/.cache/facereenact/weights): the generators.
- "torch-hub": $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints): files that
  torchvision (LPIPS backbones) and face-alignment (FAN) load from torch.hub's cache by file name.

How `fetch` keeps a download honest:
- Bytes go to `<file>.part`; only a file that passed the size and sha256 checks is moved to
  `<file>` with os.replace, so the final path holds a verified file or nothing.
- An interrupted download keeps its `.part`: what arrived is a correct prefix, and the next fetch
  asks for the rest with an HTTP Range request. `<file>.part.json` remembers the URL and the
  server's validator (ETag / Last-Modified), sent back as If-Range so a changed file restarts from
  byte 0 instead of being spliced. A server that ignores Range (200 instead of 206) restarts too.
- A complete download that fails verification is deleted: nothing tells which bytes are wrong, so
  there is nothing worth resuming. A resumed one that fails gets one fresh download from byte 0.
- `<file>.lock` (fcntl) serialises fetches of one file across processes; the second one waits,
  then finds the verified file in place.
- Entries without a published sha256 are trusted on first use: fetch prints the digest it saw and
  records it as `<file>.sha256` (sha256sum format); `verify` and later fetches check against it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from storage.errors import CheckpointError, WeightsMissingError
from storage.provenance import PACKAGE_VERSION, sha256_file

try:  # POSIX; elsewhere fetches of one file are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

WEIGHTS_LOCATION = "weights"
TORCH_HUB_LOCATION = "torch-hub"

# Environment: a per-weight URL wins over a mirror, which wins over the official URL.
URL_ENV_PREFIX = "FACEREENACT_WEIGHTS_URL_"
MIRROR_ENV = "FACEREENACT_WEIGHTS_MIRROR"

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
# torch.hub's convention: `name-<hex>.ext`, <hex> the start of the file's sha256.
_HUB_HASH = re.compile(r"-([a-f0-9]+)\.")


@dataclass(frozen=True)
class WeightSpec:
    """One named weight file.

    name:     registry name (`facereenact weights fetch NAME`)
    filename: file name on disk (for torch-hub files, the name torch.hub/torchvision expect)
    url:      official download address
    size:     exact size in bytes, or None where not established
    sha256:   full hex digest, or None where not established
    kind:     what loads it ("stylegan2", "fan", "lpips-backbone", ...)
    note:     provenance of the entry (where the numbers come from)
    location: "weights" ($FACEREENACT_HOME/weights) or "torch-hub" ($TORCH_HOME/hub/checkpoints)
    """

    name: str
    filename: str
    url: str
    size: int | None
    sha256: str | None
    kind: str
    note: str = ""
    location: str = WEIGHTS_LOCATION

    @property
    def sha256_prefix(self) -> str | None:
        """The sha256 prefix a torch-hub file name carries (`vgg16-397923af.pth`), else None."""
        if self.location != TORCH_HUB_LOCATION:
            return None
        match = _HUB_HASH.search(self.filename)
        return match.group(1) if match else None

    @property
    def url_env_var(self) -> str:
        """The environment variable that overrides this weight's URL (FACEREENACT_WEIGHTS_URL_FFHQ_1024)."""
        return URL_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", self.name.upper())


_BULAT = "https://www.adrianbulat.com/downloads/python-fan"
_TORCHVISION = "https://download.pytorch.org/models"
_NGC_STYLEGAN3 = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files"


def _torch_hub_file(base_url: str, filename: str, **fields: object) -> WeightSpec:
    """A file other libraries load from torch.hub's cache by its name (`name-<sha256 prefix>.ext`),
    downloaded from `base_url`/`filename`."""
    return WeightSpec(filename=filename, url=f"{base_url}/{filename}", location=TORCH_HUB_LOCATION,
                      **fields)  # type: ignore[arg-type]


REGISTRY: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in [
        WeightSpec(
            name="ffhq-1024",
            filename="stylegan2-ada-pytorch-ffhq.pkl",
            url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl",
            size=381_624_121,
            sha256="a205a346e86a9ddaae702e118097d014b7b8bd719491396a162cca438f2f524c",
            kind="stylegan2",
            note="stylegan2-ada-pytorch README's ffhq.pkl, 1024 px, 18 ws. Size and sha256: the "
                 "design card; the same pair is the git-lfs pointer of copies on Hugging Face "
                 "(e.g. spaces/edemana/my-stylegan-model, DragGan/DragGan-Models)",
        ),
        WeightSpec(
            name="ffhq-512",
            filename="stylegan2-ffhq-512x512.pkl",
            url="https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
                "stylegan2-ffhq-512x512.pkl",
            size=None,
            sha256="d2b1c92f41ce8a64c55f7a75ef06c4c0eef9e17b1eb29aae8c10fb37b3e60478",
            kind="stylegan2",
            note="StyleGAN2 FFHQ 512 px (16 ws) listed in the stylegan3 README (NGC). sha256: "
                 "git-lfs oid of the copy in Hugging Face DragGan/DragGan-Models, whose download "
                 "script fetches this NGC file (one third-party source). Exact size not "
                 "published (that page says 364 MB)",
        ),
        WeightSpec(
            name="ffhq-256",
            filename="stylegan2-ada-pytorch-ffhq-res256-mirror-paper256-noaug.pkl",
            url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"
                "transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl",
            size=None,
            sha256=None,
            kind="stylegan2",
            note="stylegan2-ada-pytorch train.py resume_specs['ffhq256'] (paper256 config, 256 px, "
                 "14 ws). No size or sha256 published anywhere found: fetch records the digest it "
                 "sees (trust on first use)",
        ),
        *[WeightSpec(
            name=f"sg3-{cfg}-{data}-{res}",
            filename=f"stylegan3-{cfg}-{data}-{res}x{res}.pkl",
            url=f"{_NGC_STYLEGAN3}/stylegan3-{cfg}-{data}-{res}x{res}.pkl",
            size=None,
            sha256=None,
            kind="stylegan3",
            note=f"StyleGAN3-{cfg.upper()} {'FFHQ' if data == 'ffhq' else 'FFHQ-U (unaligned)'}, {res} px, "
                 "16 ws, from the stylegan3 README's NGC list (the thesis's generator). No size or "
                 "sha256 found offline: fetch records the digest it sees (trust on first use) and "
                 "checks every later fetch and verify against it",
        ) for cfg, data, res in (("t", "ffhq", 1024), ("r", "ffhq", 1024), ("t", "ffhqu", 256),
                                 ("r", "ffhqu", 256))],
        _torch_hub_file(
            _BULAT, "2DFAN4-11f355bf06.pth.tar",
            name="fan-2d",
            size=None,
            sha256="11f355bf0693120222f5955ce3f9dc8fb5763ebb30a47d7906e509490d32e4aa",
            kind="fan",
            note="Bulat's 2D-FAN-4, the URL of face-alignment 1.5 (face_alignment/api.py "
                 "models_urls['2DFAN-4']), loaded from torch.hub's checkpoints dir by file name. "
                 "sha256: pinned by several public projects, and starts with the file name's "
                 "11f355bf06. Size not published",
        ),
        _torch_hub_file(
            _BULAT, "s3fd-619a316812.pth",
            name="fan-s3fd",
            size=None,
            sha256="619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
            kind="fan-detector",
            note="face-alignment's default face detector (S3FD, detection/sfd/sfd_detector.py); "
                 "needed only when face-alignment detects faces itself. sha256: pinned beside "
                 "2DFAN4 by the same public projects, starts with the file name's 619a316812. "
                 "Size not published",
        ),
        _torch_hub_file(
            _TORCHVISION, "alexnet-owt-7be5be79.pth",
            name="lpips-alexnet",
            size=244_408_911,
            sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
            kind="lpips-backbone",
            note="torchvision AlexNet_Weights.IMAGENET1K_V1, LPIPS's default backbone. Size and "
                 "sha256: several public projects agree (one quotes the server's Content-Length); "
                 "torchvision's _file_size 233.087 MB = 244408911 / 2**20; sha256 starts with the "
                 "file name's 7be5be79",
        ),
        _torch_hub_file(
            _TORCHVISION, "vgg16-397923af.pth",
            name="lpips-vgg16",
            size=553_433_881,
            sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
            kind="lpips-backbone",
            note="torchvision VGG16_Weights.IMAGENET1K_V1, LPIPS's vgg backbone. Size: torch.hub "
                 "progress logs in public notebooks, = torchvision's _file_size 527.796 MB * 2**20; "
                 "sha256: several public projects agree, starts with the file name's 397923af",
        ),
    ]
}


# -- where weights live ---------------------------------------------------------------------------

def weights_dir() -> Path:
    """Where named weights live: $FACEREENACT_HOME/weights, default ~/.cache/facereenact/weights."""
    home = os.environ.get("FACEREENACT_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "facereenact")
    return Path(home) / "weights"


def torch_hub_checkpoints_dir() -> Path:
    """Where torch.hub (and so torchvision and face-alignment) looks for downloaded weights.

    Same rule as torch.hub.get_dir() without importing torch: $TORCH_HOME/hub/checkpoints, default
    $XDG_CACHE_HOME/torch (~/.cache/torch). A torch.hub.set_dir() inside some process is not seen.
    """
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def default_dir(spec: WeightSpec) -> Path:
    """The directory a weight belongs in, by its location."""
    return torch_hub_checkpoints_dir() if spec.location == TORCH_HUB_LOCATION else weights_dir()


def get_spec(name: str) -> WeightSpec:
    """The registry entry for `name`, or a one-line error listing the known names."""
    spec = REGISTRY.get(name)
    if spec is None:
        known = ", ".join(sorted(REGISTRY))
        raise WeightsMissingError(f"unknown weight name {name!r} (known: {known}; or give a file path)")
    return spec


def spec_for_file(path: str | Path) -> WeightSpec | None:
    """The registry entry whose file name is `path`'s name, if any."""
    name = Path(path).name
    return next((spec for spec in REGISTRY.values() if spec.filename == name), None)


def require(name: str) -> Path:
    """Path of the named weight, or a one-line WeightsMissingError saying where we looked and how to
    fetch it. A file of the wrong size (truncated copy) is a CheckpointError; the sha256 is checked
    by `verify` and by whatever records the model's sha256 in provenance, not on every call."""
    spec = get_spec(name)
    path = default_dir(spec) / spec.filename
    if not path.is_file():
        raise WeightsMissingError(
            f"weight {spec.filename!r} ({name}) not found in {path.parent}; "
            f"fetch it with: facereenact weights fetch {name}")
    if spec.size is not None and (size := path.stat().st_size) != spec.size:
        raise CheckpointError(
            f"size mismatch: expected {spec.size} bytes, got {size}; fetch it again with: "
            f"facereenact weights fetch {name}", path=path)
    return path


def resolve_url(spec: WeightSpec, url: str | None = None) -> str:
    """Where to download `spec` from: `url`, else ${spec.url_env_var}, else $FACEREENACT_WEIGHTS_MIRROR
    + '/' + file name, else the official URL."""
    if url:
        return url
    if override := os.environ.get(spec.url_env_var):
        return override
    if mirror := os.environ.get(MIRROR_ENV):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(spec.filename)
    return spec.url


# -- verification ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verification:
    """Outcome of checking one file. `message` is one line; `ok` is False only for a missing file or
    one that contradicts a known size, sha256, sha256 prefix or recorded digest.

    status: "ok" (matches the pinned sha256), "prefix" (matches the file name's sha256 prefix),
    "recorded" (matches the digest recorded at its first fetch), "unpinned" (nothing to compare
    with), "mismatch", "missing".
    """

    path: Path
    status: str
    detail: str
    size: int | None = None
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "prefix", "recorded", "unpinned")

    @property
    def message(self) -> str:
        return f"{self.path}: {self.detail}"


def record_path(path: str | Path) -> Path:
    """`<file>.sha256`: the digest recorded for a file whose registry entry pins none."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def read_record(path: str | Path) -> str | None:
    """The digest recorded beside `path` (sha256sum format), or None."""
    try:
        text = record_path(path).read_text()
    except FileNotFoundError:
        return None
    token = text.split()[0].lower() if text.split() else ""
    return token if re.fullmatch(r"[0-9a-f]{64}", token) else None


def _write_record(path: Path, digest: str) -> None:
    target = record_path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp, target)


def _check(path: Path, spec: WeightSpec | None, recorded: str | None) -> Verification:
    """Compare `path` with what is known about it: the spec's size and sha256, else a recorded
    digest, else the file name's sha256 prefix."""
    if not path.is_file():
        return Verification(path, "missing", "missing")
    size = path.stat().st_size
    if spec is not None and spec.size is not None and size != spec.size:
        return Verification(path, "mismatch", f"size mismatch: expected {spec.size} bytes, got {size}",
                            size)
    digest = sha256_file(path)
    seen = f"{size} bytes, sha256 {digest}"
    if spec is not None and spec.sha256:
        if digest != spec.sha256:
            return Verification(path, "mismatch",
                                f"sha256 mismatch: expected {spec.sha256}, got {digest}", size, digest)
        return Verification(path, "ok", f"{seen}: OK ({spec.name})", size, digest)
    if recorded:
        if digest != recorded:
            return Verification(path, "mismatch", f"sha256 mismatch: expected {recorded} (recorded "
                                f"at its first fetch), got {digest}", size, digest)
        return Verification(path, "recorded", f"{seen}: OK (matches the digest recorded at its "
                            f"first fetch)", size, digest)
    if spec is not None and spec.sha256_prefix:
        if not digest.startswith(spec.sha256_prefix):
            return Verification(path, "mismatch", f"sha256 mismatch: expected a digest starting "
                                f"{spec.sha256_prefix} (from the file name), got {digest}", size, digest)
        return Verification(path, "prefix", f"{seen}: OK (starts with the file name's "
                            f"{spec.sha256_prefix})", size, digest)
    what = f"{spec.name} has no published sha256" if spec is not None else "no registry entry"
    return Verification(path, "unpinned", f"{seen}: not verified ({what})", size, digest)


def verify(path: str | Path, spec: WeightSpec | None = None) -> Verification:
    """Check a weight file's size and sha256 against its registry entry (found by file name when
    `spec` is None) or the digest recorded beside it. Never raises for a bad file: see `.ok`."""
    path = Path(path)
    if spec is None:
        spec = spec_for_file(path)
    return _check(path, spec, read_record(path))


# -- fetching -------------------------------------------------------------------------------------

def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"facereenact: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, label: str, quiet: bool) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `lock_path` (left in place: deleting lock files races)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process fetching {label} (lock {lock_path})", quiet)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Content-Range -> (first byte, total): 'bytes 100-199/200' -> (100, 200), 'bytes */200' ->
    (None, 200); None for what is not given."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (None if start is None else int(start)), (None if total == "*" else int(total))


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    if isinstance(reason, BaseException):
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    else:
        text = str(reason)
    return " ".join(text.split())


class _Download:
    """Brings `<file>.part` to the full file from `url` (unverified); see the module docstring.

    `verifiable`: whether the finished bytes will be checked against a known digest. Without one, a
    resumed file could not be told from a spliced one, so such a download resumes only when the
    server gave a validator (ETag / Last-Modified) to send back as If-Range.
    """

    def __init__(self, spec: WeightSpec, url: str, final: Path, *, verifiable: bool,
                 progress: bool | None, quiet: bool):
        self.spec, self.url, self.final, self.verifiable = spec, url, final, verifiable
        self.part = final.with_name(final.name + ".part")
        self.meta = final.with_name(final.name + ".part.json")
        self.progress, self.quiet = progress, quiet

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def _resumable(self) -> tuple[int, dict]:
        """Bytes already in `.part` that may be continued, and the validator saved with them."""
        if not self.part.is_file():
            return 0, {}
        try:
            meta = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return 0, {}
        offset = self.part.stat().st_size
        validator = meta.get("etag") or meta.get("last_modified")
        if (meta.get("url") != self.url  # from another source
                or (self.spec.size is not None and offset > self.spec.size)
                or not (self.verifiable or validator)):
            return 0, {}
        return offset, meta

    def _error(self, message: str) -> WeightsMissingError:
        return WeightsMissingError(f"cannot download {self.spec.name} ({self.spec.filename}) from "
                                   f"{self.url}: {message}", path=self.final)

    def run(self) -> bool:
        """Complete `.part`. Returns True when it continued bytes from an earlier attempt."""
        offset, meta = self._resumable()
        if offset and offset == self.spec.size:
            return True  # complete already; verification decides
        headers = {"User-Agent": f"facereenact/{PACKAGE_VERSION}", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator := meta.get("etag") or meta.get("last_modified"):
                headers["If-Range"] = validator
        try:
            response = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers),
                                              timeout=_TIMEOUT_S)
        except urllib.error.HTTPError as err:
            with contextlib.suppress(Exception):
                err.close()
            if err.code == 416 and offset:
                _, total = _parse_content_range((err.headers or {}).get("Content-Range"))
                if total == offset:
                    return True  # nothing after `offset`: the part is complete
                self.discard()  # the file is shorter than our part: it changed, start over
                return self.run()
            raise self._error(f"HTTP {err.code} {err.reason}; check the URL, or set "
                              f"{self.spec.url_env_var} or {MIRROR_ENV}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            raise self._error(
                f"{_reason(err)}; if this machine is offline, download the file elsewhere and copy "
                f"it to {self.final}, or point {MIRROR_ENV} at a mirror") from None
        with response:
            return self._receive(response, offset)

    def _receive(self, response, offset: int) -> bool:
        status = response.status
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        if offset and status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                self.discard()
                raise self._error(f"asked for bytes from {offset}, the server sent from {start}; "
                                  f"removed the partial download, run the same command to start over")
            if total is None and length is not None:
                total = offset + length
        elif status == 200:
            if offset:
                _say(f"{self.url} sent the whole file instead of the rest (Range not honoured, or "
                     f"the file changed); restarting {self.spec.filename} from byte 0", self.quiet)
            offset, total = 0, length
        else:
            raise self._error(f"unexpected HTTP status {status}")
        if total is not None and self.spec.size is not None and total != self.spec.size:
            self.discard()
            raise CheckpointError(f"size mismatch: expected {self.spec.size} bytes, {self.url} "
                                  f"offers {total}; nothing was kept", path=self.final)
        if offset == 0:  # fresh bytes: empty the part, then save the validator that belongs to them
            self.part.unlink(missing_ok=True)
            self.meta.write_text(json.dumps({"url": self.url, "etag": response.headers.get("ETag"),
                                             "last_modified": response.headers.get("Last-Modified")}))
        received = self._stream(response, offset, total)
        if total is not None and offset + received < total:
            raise self._error(f"interrupted after {offset + received} of {total} bytes (connection "
                              f"closed early); run the same command to resume")
        return offset > 0

    def _stream(self, response, offset: int, total: int | None) -> int:
        from tqdm import tqdm

        received = 0
        with open(self.part, "ab") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=self.spec.filename, file=sys.stderr, leave=False,
            disable=None if self.progress is None else not self.progress,
        ) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException, ValueError) as err:  # reset, timeout, ...
                out.flush()
                raise self._error(f"interrupted after {offset + received} bytes ({_reason(err)}); "
                                  f"run the same command to resume") from None
            out.flush()
            os.fsync(out.fileno())
        return received


def fetch(name_or_spec: str | WeightSpec, dest_dir: str | Path | None = None, url: str | None = None,
          *, progress: bool | None = False, quiet: bool = False) -> Path:
    """Download a registered weight into `dest_dir` (default: its home, see `default_dir`), verify
    it, and return its path. A file already there that verifies is returned as is.

    url overrides the download address (else resolve_url's environment rules). progress: a tqdm bar
    on stderr (None: only when stderr is a terminal). quiet: no notes on stderr.
    Raises WeightsMissingError when the download fails (offline, HTTP error, interrupted: run again
    to resume) and CheckpointError when the bytes do not verify (nothing is left at the path).
    """
    spec = name_or_spec if isinstance(name_or_spec, WeightSpec) else get_spec(name_or_spec)
    final = Path(dest_dir or default_dir(spec)).expanduser() / spec.filename
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(final.with_name(final.name + ".lock"), spec.filename, quiet):
        if final.exists():
            present = verify(final, spec)
            if present.ok:
                return final
            _say(f"{present.message}; downloading it again", quiet)
        recorded = read_record(final)
        download = _Download(spec, resolve_url(spec, url), final, progress=progress, quiet=quiet,
                             verifiable=bool(spec.sha256 or recorded or spec.sha256_prefix))
        for attempt in (1, 2):
            resumed = download.run()
            check = _check(download.part, spec, recorded)
            if check.ok:
                break
            download.discard()
            if resumed and attempt == 1:
                _say(f"the resumed download of {spec.filename} does not verify ({check.detail}); "
                     f"starting over from byte 0", quiet)
                continue
            hint = ""
            if recorded and not spec.sha256:  # checked against the digest of its first fetch
                hint = f"; delete {record_path(final)} to accept a changed file"
            raise CheckpointError(f"{check.detail} (downloaded from {download.url}); the download "
                                  f"was removed{hint}", path=final)
        if check.status == "unpinned":
            _write_record(final, check.sha256 or "")
            _say(f"note: {spec.name} has no published sha256; this download's is {check.sha256} "
                 f"({check.size} bytes), recorded in {record_path(final)} for "
                 f"`facereenact weights verify` and later fetches", quiet)
        os.replace(download.part, final)
        _fsync_dir(final.parent)
        download.meta.unlink(missing_ok=True)
    return final
