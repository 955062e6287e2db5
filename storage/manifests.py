"""What a job runs on: dataset specs (folder, glob, CSV/JSONL manifest) and batch manifests.

Paths in a manifest are resolved against the manifest's own directory. A relative path that climbs
out of that directory (`../../etc/passwd`) is refused, and batch outputs must stay inside the batch's
output directory: a manifest is data from someone else and must not make us read or write anywhere.
Every problem is an InputError naming the manifest, the line, and the field.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import InputError
from storage.files import require_regular_file
from storage.limits import MAX_STEPS

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
MANIFEST_SUFFIXES = frozenset({".csv", ".jsonl", ".ndjson"})
BATCH_SUFFIXES = frozenset({".yaml", ".yml", ".jsonl", ".ndjson", ".json"})
REENACT_MODES = ("projection", "mapping", "directions")
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is a list of paths; anything bigger is a mistake


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def resolve_entry(value: Any, base: Path, where: str, *, must_exist: bool = True) -> Path:
    """A path from a manifest: relative to `base`, never climbing out of it."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: expected a path, got {value!r}")
    if "\x00" in value:
        raise InputError(f"{where}: path contains a NUL byte")
    raw = Path(value.strip()).expanduser()
    path = raw if raw.is_absolute() else base / raw
    if not raw.is_absolute() and not _inside(path, base):
        raise InputError(f"{where}: path {value!r} escapes the manifest's directory {base}")
    if must_exist and not path.is_file():
        if path.exists():
            try:
                require_regular_file(path)
            except InputError as err:
                raise InputError(f"{where}: {err}") from None
        raise InputError(f"{where}: file not found: {path}")
    return path


def _read_text(path: Path) -> str:
    require_regular_file(path, "a manifest")  # a FIFO would block read_text forever
    try:
        size = path.stat().st_size
    except OSError as err:
        raise InputError(f"cannot read manifest ({err.strerror})", path=path) from None
    if size > MAX_MANIFEST_BYTES:
        raise InputError(f"manifest is {size} bytes, more than the {MAX_MANIFEST_BYTES} allowed", path=path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("manifest is not UTF-8 text", path=path) from None


def _jsonl_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"line {lineno}: not valid JSON ({err.msg})", path=path) from None
        except RecursionError:
            raise InputError(f"line {lineno}: JSON nested too deeply", path=path) from None
        if not isinstance(row, dict):
            raise InputError(f"line {lineno}: expected a JSON object, got {type(row).__name__}", path=path)
        yield lineno, row


def _csv_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    text = _read_text(path)
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise InputError("CSV manifest is empty (no header row)", path=path)
    for lineno, row in enumerate(reader, start=2):
        if None in row:
            raise InputError(f"line {lineno}: more values than header columns", path=path)
        yield lineno, {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}


def collect_videos(spec: str | Path) -> list[Path]:
    """The videos of a dataset spec: a folder (searched recursively), a glob, or a manifest.

    A manifest is CSV with a `path` (or `video`) column, or JSONL with a `path` (or `video`) key per
    line. Order is kept for manifests and sorted otherwise; duplicates are dropped. An empty dataset
    is an error: a job over nothing is always a mistake in the spec.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        where = f"folder {path}"
    elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
        videos = []
        for lineno, row in rows:
            key = "path" if "path" in row else "video"
            if key not in row:
                raise InputError(f"line {lineno}: no 'path' (or 'video') field", path=path)
            videos.append(resolve_entry(row[key], path.parent, f"{path}: line {lineno}, {key}"))
        where = f"manifest {path}"
    elif path.is_file():
        videos = [path]
        where = str(path)
    elif path.exists():
        require_regular_file(path, "a video or manifest")  # a FIFO, a device, a socket: refused
        raise InputError("not a file, folder or manifest", path=text)
    elif glob.has_magic(text):
        videos = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                        if Path(p).is_file())
        where = f"pattern {text!r}"
    else:
        raise InputError("no such file, folder or manifest", path=text)
    unique = list(dict.fromkeys(p.resolve() for p in videos))
    if not unique:
        raise InputError(f"no videos found in {where}")
    return unique


@dataclass(frozen=True)
class BatchJob:
    """One reenactment job of a batch manifest: look (source) x motion (driving) -> output."""

    name: str
    source: Path
    driving: Path
    output: Path
    mode: str = "projection"
    options: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0
    where: str = ""  # "MANIFEST: job N (line L)": how errors about this job name it

    @property
    def job_id(self) -> str:
        """Stable id from what the job is (inputs by path, mode, options, output)."""
        blob = json.dumps([str(self.source), str(self.driving), str(self.output), self.mode,
                           dict(sorted(self.options.items()))], sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


_BATCH_KEYS = {"name", "source", "driving", "output", "mode", "options"}


def load_batch(manifest: str | Path, output_dir: str | Path | None = None) -> list[BatchJob]:
    """Parse a batch manifest (YAML: a list of jobs or {"jobs": [...]}; or JSONL, one job per line).

    Each job: source (image), driving (video), output (mp4, relative to `output_dir`, default the
    manifest's directory), mode (projection | mapping), options (dict, passed to the mode). All
    problems are found before anything runs, each an InputError naming the line and the field.
    """
    path = Path(manifest).expanduser()
    if path.exists() and not path.is_file():
        require_regular_file(path, "a batch manifest")
    if not path.is_file():
        raise InputError("batch manifest not found", path=path)
    suffix = path.suffix.lower()
    if suffix not in BATCH_SUFFIXES:
        raise InputError(f"batch manifest must be YAML or JSONL (got {suffix or 'no suffix'})", path=path)
    base = path.parent
    out_root = Path(output_dir).expanduser() if output_dir is not None else base
    rows = list(_jsonl_rows(path)) if suffix in (".jsonl", ".ndjson") else _yaml_rows(path)
    if not rows:
        raise InputError("batch manifest lists no jobs", path=path)
    jobs: list[BatchJob] = []
    seen_outputs: dict[Path, int] = {}
    seen_names: set[str] = set()
    for index, (lineno, row) in enumerate(rows, start=1):
        where = f"{path}: job {index}" + (f" (line {lineno})" if lineno else "")
        unknown = set(row) - _BATCH_KEYS
        if unknown:
            raise InputError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_BATCH_KEYS)}")
        for key in ("source", "driving", "output"):
            if key not in row:
                raise InputError(f"{where}: missing field {key!r}")
        source = resolve_entry(row["source"], base, f"{where}, source")
        driving = resolve_entry(row["driving"], base, f"{where}, driving")
        out_value = row["output"]
        if not isinstance(out_value, str) or not out_value.strip():
            raise InputError(f"{where}, output: expected a path, got {out_value!r}")
        if Path(out_value).is_absolute():
            raise InputError(f"{where}, output: must be relative to the output directory {out_root}")
        output = out_root / out_value.strip()
        if not _inside(output, out_root):
            raise InputError(f"{where}, output: path {out_value!r} escapes the output directory {out_root}")
        if output.suffix.lower() != ".mp4":
            raise InputError(f"{where}, output: must end in .mp4")
        if output.resolve() in seen_outputs:
            raise InputError(f"{where}, output: same output as job {seen_outputs[output.resolve()]}")
        seen_outputs[output.resolve()] = index
        mode = row.get("mode", "projection")
        if mode not in REENACT_MODES:
            raise InputError(f"{where}, mode: {mode!r} is not one of {list(REENACT_MODES)}")
        options = row.get("options") or {}
        if not isinstance(options, dict):
            raise InputError(f"{where}, options: expected a mapping, got {type(options).__name__}")
        _check_numbers(options, f"{where}, options")
        name = str(row.get("name") or Path(out_value).stem)
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise InputError(f"{where}, name: {name!r} may hold only letters, digits, '-', '_' and '.'")
        if name in seen_names:
            raise InputError(f"{where}, name: {name!r} is used by another job")
        seen_names.add(name)
        jobs.append(BatchJob(name=name, source=source, driving=driving, output=output, mode=mode,
                             options=dict(options), line=lineno, where=where))
    return jobs


def _yaml_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The jobs of a YAML manifest with the line each starts on (errors name it)."""
    import yaml

    text = _read_text(path)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()  # parsed once, into nodes: aliases are shared, not copied yet
        _check_yaml_size(node, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"not valid YAML{at}", path=path) from None
    except RecursionError:
        raise InputError("YAML nested too deeply to be a manifest", path=path) from None
    finally:
        loader.dispose()
    if isinstance(data, dict) and "jobs" in data:
        data = data["jobs"]
        node = next((v for k, v in node.value if k.value == "jobs"), None)
    if data is None:
        return []
    if not isinstance(data, list):
        raise InputError("expected a list of jobs (or a mapping with a 'jobs' list)", path=path)
    lines = [item.start_mark.line + 1 for item in node.value] if isinstance(node, yaml.SequenceNode) else []
    rows = []
    for index, row in enumerate(data, start=1):
        lineno = lines[index - 1] if len(lines) == len(data) else 0
        if not isinstance(row, dict):
            at = f" (line {lineno})" if lineno else ""
            raise InputError(f"job {index}{at}: expected a mapping, got {type(row).__name__}", path=path)
        rows.append((lineno, row))
    return rows


MAX_YAML_NODES = 1_000_000  # values a manifest may hold once its aliases are expanded


def _check_yaml_size(root: Any, path: Path) -> None:
    """Refuse a YAML document whose aliases would expand past MAX_YAML_NODES values ("billion
    laughs": nine lines of `&a [*b, *b, ...]` stand for 10**9 strings) or refer to themselves, before
    anything is constructed. Sizes are counted per node, once each, without expanding anything."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:  # post-order, iterative: deep nesting is no RecursionError here
        node, done = stack.pop()
        if node is None or id(node) in sizes:
            continue
        children = [] if isinstance(node, yaml.ScalarNode) else \
            [c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode) else list(node.value)
        if not done:
            if id(node) in active:
                raise InputError("YAML alias refers to itself (a recursive structure)", path=path)
            active.add(id(node))
            stack.append((node, True))
            for child in children:
                if id(child) in active and id(child) not in sizes:
                    raise InputError("YAML alias refers to itself (a recursive structure)", path=path)
                stack.append((child, False))
            continue
        active.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
        if sizes[id(node)] > MAX_YAML_NODES:
            raise InputError(f"YAML expands to more than {MAX_YAML_NODES} values once its aliases are "
                             "followed (an alias bomb?); refused", path=path)


def _check_numbers(options: Mapping[str, Any], where: str) -> None:
    """Numbers in a job's options: finite (JSON and YAML both spell NaN and infinity), and any
    `...steps...` count a whole number in [0, MAX_STEPS] (10**12 steps would run for ever)."""
    def check(key: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, dict):
            for k, v in value.items():
                check(f"{key}.{k}", v)
        elif isinstance(value, list | tuple):
            for v in value:
                check(key, v)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}: {key} must be a finite number, got {value}")
        elif "steps" in key.rsplit(".", 1)[-1] and isinstance(value, int | float) and \
                (value != int(value) or not 0 <= value <= MAX_STEPS):
            raise InputError(f"{where}: {key} must be a whole number of steps in [0, {MAX_STEPS}], "
                             f"got {value}")

    for name, value in options.items():
        check(str(name), value)
