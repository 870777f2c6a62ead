"""The only module that knows paths, partition layout, atomic writes and manifests.

Inputs (the data contract, docs/data-contract.md)::

    <data>/events/dt=YYYY-MM-DD/*.parquet
    <data>/users.parquet
    <data>/items.parquet
    <data>/<image_path>                            files named by items.image_path, confined to <data>

Outputs::

    <out>/<dataset>/dt=YYYY-MM-DD/<name>.parquet   (plus model files, _config.json)
    <out>/<dataset>/dt=YYYY-MM-DD/_manifest.json   (written last: a partition without it is not committed)
    <out>/<dataset>/_latest.json                   (newest complete date, replaced atomically)
    <out>/.locks/dt=YYYY-MM-DD.lock                (held while a run of that date writes; pipelines.lock)

A partition is staged whole in `<out>/.staging/<dataset>/dt=...-<run>/` and committed by renames: the
old partition (if any) is moved to `<out>/.staging/<dataset>/replaced-dt=...-<run>/`, the staged one takes
its place, the old one is deleted. A crash between the two renames leaves the old partition in `replaced-*`,
and the next write or read of that date puts it back. Staging lives outside `<out>/<dataset>/` (same file
system, so renames stay atomic) because some readers (polars globs) do not skip hidden folders; the dataset
folder only ever holds committed `dt=` partitions and `_`-prefixed JSON files that Parquet readers ignore.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.config import EmbeddingsConfig
from pipelines.names import EMBEDDINGS

log = logging.getLogger(__name__)

EVENTS_DIR = "events"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"
MANIFEST = "_manifest.json"
CONFIG_FILE = "_config.json"
LATEST = "_latest.json"
LOCKS_DIR = ".locks"
_DT_RE = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


# ---------------------------------------------------------------- inputs


def users_path(data: Path) -> Path:
    return Path(data) / USERS_FILE


def items_path(data: Path) -> Path:
    return Path(data) / ITEMS_FILE


def events_root(data: Path) -> Path:
    return Path(data) / EVENTS_DIR


def event_partition_dir(data: Path, dt: date) -> Path:
    return events_root(data) / f"dt={dt.isoformat()}"


def image_file(data: Path, rel: str) -> Path:
    """The file an items.image_path value names: `<data>/<rel>`, symbolic links resolved.

    Raises ValueError when `rel` is not a normalised relative path or resolves outside `data` (see
    `input_path_rejections`); the file itself is neither checked nor opened.
    """
    bad = _lexical_rejection(rel)
    if bad is None:
        resolved = Path(os.path.realpath(Path(data) / rel))
        if _inside(str(resolved), os.path.realpath(data)):
            return resolved
        bad = OUTSIDE
    raise ValueError(f"{data}: image path {rel!r} is refused (paths that {bad.reason}); fix: {bad.fix}")


def event_files(data: Path) -> dict[date, list[Path]]:
    """Parquet files of each event partition, by date, sorted. Folders not named dt=YYYY-MM-DD are skipped."""
    root = events_root(data)
    out: dict[date, list[Path]] = {}
    if not root.is_dir():
        return out
    for sub in sorted(root.iterdir()):
        m = _DT_RE.match(sub.name)
        if not sub.is_dir() or not m:
            continue
        try:
            dt = date.fromisoformat(m.group(1))
        except ValueError:
            continue
        out[dt] = sorted(p for p in sub.glob("*.parquet") if p.is_file())
    return out


def input_files(data: Path, first: date, last: date) -> list[Path]:
    """users.parquet, items.parquet and the Parquet files of every event partition of [first, last] present
    under `data`: what a stage reading that date range reads (its cache key fingerprints them)."""
    files = [users_path(data), items_path(data)]
    for d, day_files in event_files(data).items():
        if first <= d <= last:
            files.extend(day_files)
    return files


def stray_event_dirs(data: Path) -> list[Path]:
    """Entries under events/ that are not dt=YYYY-MM-DD folders (reported by validation)."""
    root = events_root(data)
    if not root.is_dir():
        return []
    bad = []
    for sub in sorted(root.iterdir()):
        if sub.name.startswith((".", "_")):
            continue
        m = _DT_RE.match(sub.name)
        ok = bool(m) and sub.is_dir()
        if ok:
            try:
                date.fromisoformat(m.group(1))
            except ValueError:
                ok = False
        if not ok:
            bad.append(sub)
    return bad


def event_dates(data: Path) -> list[date]:
    return sorted(event_files(data))


_ID_COLS = ("user_id", "item_id")


def _ids_as_string(lf: pl.LazyFrame, cols: tuple[str, ...]) -> pl.LazyFrame:
    names = lf.collect_schema().names()
    return lf.with_columns([pl.col(c).cast(pl.String) for c in cols if c in names])


def scan_events(data: Path, start: date, end: date) -> pl.LazyFrame:
    """Lazy scan of events with start <= dt <= end: user_id, item_id (strings), event, ts (UTC), dt (Date).

    Exact duplicates (same user_id, item_id, event and ts after those casts) are kept once, first
    occurrence first (validation warns about them). They are removed one partition at a time, so memory
    follows one day of events; events of one ts share the partition of its UTC date.
    """
    frames = []
    for dt, files in event_files(data).items():
        if not (start <= dt <= end):
            continue
        day = [
            _ids_as_string(pl.scan_parquet(f), _ID_COLS).select(
                "user_id",
                "item_id",
                "event",
                pl.col("ts").cast(pl.Datetime("us", "UTC")),
                pl.lit(dt).alias("dt"),
            )
            for f in files
        ]
        if day:
            frames.append(pl.concat(day, how="vertical").unique(keep="first", maintain_order=True))
    if not frames:
        return pl.LazyFrame(
            schema={
                "user_id": pl.String,
                "item_id": pl.String,
                "event": pl.String,
                "ts": pl.Datetime("us", "UTC"),
                "dt": pl.Date,
            }
        )
    return pl.concat(frames, how="vertical")


def read_users(data: Path) -> pl.DataFrame:
    return _ids_as_string(pl.scan_parquet(users_path(data)), ("user_id",)).collect()


def read_items(data: Path) -> pl.DataFrame:
    return _ids_as_string(pl.scan_parquet(items_path(data)), ("item_id",)).collect()


def write_input_table(data: Path, which: str, df: pl.DataFrame) -> Path:
    """Write users.parquet or items.parquet of an input data set (generator and importers), atomically."""
    target = {"users": users_path(data), "items": items_path(data)}[which]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    df.write_parquet(tmp)
    os.replace(tmp, target)
    return target


def write_input_events(data: Path, dt: date, df: pl.DataFrame, part: str = "part-0") -> Path:
    """Write one event partition file of an input data set, atomically."""
    d = event_partition_dir(data, dt)
    d.mkdir(parents=True, exist_ok=True)
    target = d / f"{part}.parquet"
    tmp = d / f".{part}.{uuid.uuid4().hex}.tmp"
    df.write_parquet(tmp)
    os.replace(tmp, target)
    return target


def write_input_file(data: Path, rel: str, payload: bytes) -> Path:
    """Write a file referenced by the inputs (e.g. a product image) under the data root.

    `rel` must be a normalised relative path that stays inside `data` (ValueError otherwise), so a
    generator or importer cannot write what the pipeline would refuse to read.
    """
    bad = _lexical_rejection(rel)
    if bad is not None:
        raise ValueError(f"{data}: cannot write {rel!r} (paths that {bad.reason}); fix: {bad.fix}")
    target = image_file(data, rel)  # links resolved: a linked folder or file must still be inside data
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    return Path(data) / rel


# ---------------------------------------------------------------- run metadata


def code_revision() -> str:
    """Git revision of the code (with '+dirty' when the work tree differs), or the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "release-" + version("recsys-pipeline")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class RunInfo:
    """What every output records about the run that made it."""

    run_id: str
    config_hash: str
    code_revision: str
    config: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def new(cls, config: dict[str, Any], config_hash: str, run_id: str | None = None) -> RunInfo:
        return cls(run_id or uuid.uuid4().hex[:12], config_hash, code_revision(), config)


# ---------------------------------------------------------------- outputs


def dataset_dir(out: Path, dataset: str) -> Path:
    return Path(out) / dataset


def partition_dir(out: Path, dataset: str, dt: date) -> Path:
    return dataset_dir(out, dataset) / f"dt={dt.isoformat()}"


def staging_dir(out: Path, dataset: str) -> Path:
    return Path(out) / ".staging" / dataset


def _recover(out: Path, dataset: str, dt: date) -> None:
    """Put back a partition whose replacement crashed between the two renames of a commit."""
    final = partition_dir(out, dataset, dt)
    parent = staging_dir(out, dataset)
    if not parent.is_dir():
        return
    leftovers = sorted(parent.glob(f"replaced-{final.name}-*"), key=lambda p: p.stat().st_mtime)
    if not leftovers:
        return
    if not final.exists():
        newest = leftovers.pop()
        os.rename(newest, final)
        log.warning("restored %s from an interrupted commit (%s)", final, newest.name)
    for old in leftovers:
        shutil.rmtree(old, ignore_errors=True)


def is_committed(out: Path, dataset: str, dt: date) -> bool:
    _recover(out, dataset, dt)
    return (partition_dir(out, dataset, dt) / MANIFEST).is_file()


def committed_dates(out: Path, dataset: str) -> list[date]:
    root = dataset_dir(out, dataset)
    if not root.is_dir():
        return []
    dates = []
    for sub in root.iterdir():
        m = _DT_RE.match(sub.name)
        if m and (sub / MANIFEST).is_file():
            dates.append(date.fromisoformat(m.group(1)))
    return sorted(dates)


def previous_committed(out: Path, dataset: str, dt: date) -> date | None:
    """The newest committed date of `dataset` strictly before `dt` (what a warm start reads), or None."""
    earlier = [d for d in committed_dates(out, dataset) if d < dt]
    return earlier[-1] if earlier else None


def read_manifest(out: Path, dataset: str, dt: date) -> dict[str, Any]:
    _recover(out, dataset, dt)
    path = partition_dir(out, dataset, dt) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no committed partition {dataset}/dt={dt}; fix: run the stage that writes it for {dt}"
        )
    return json.loads(path.read_text())


def committed_path(out: Path, dataset: str, dt: date, name: str) -> Path:
    """Path of a file inside a committed partition (raises when the partition is not committed)."""
    if not is_committed(out, dataset, dt):
        raise FileNotFoundError(
            f"{partition_dir(out, dataset, dt)}: no committed partition; "
            f"fix: run the stage that writes {dataset} for {dt}"
        )
    return partition_dir(out, dataset, dt) / name


def read_table(out: Path, dataset: str, dt: date, name: str = "part-0") -> pl.DataFrame:
    return pl.read_parquet(committed_path(out, dataset, dt, f"{name}.parquet"))


def scan_table(out: Path, dataset: str, dt: date, name: str = "part-0") -> pl.LazyFrame:
    return pl.scan_parquet(committed_path(out, dataset, dt, f"{name}.parquet"))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace a small JSON file atomically (temp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class TableWriter:
    """Appends polars frames to one Parquet file (one row group or more per `write`); see
    `StagedPartition.table_writer`. Every frame must have the schema of the first one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, df: pl.DataFrame) -> None:
        """df: one block of rows; the first block fixes the schema of the file."""
        table = df.to_arrow()
        if self._writer is None:
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self.path, table.schema, write_statistics=True)
        elif table.schema != self._schema:
            table = table.cast(self._schema)  # same names and order; e.g. large_string vs string views
        self._writer.write_table(table)
        self.rows += df.height

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class StagedPartition:
    """A partition being written; see `staged_partition`."""

    def __init__(self, directory: Path, dataset: str, dt: date, run: RunInfo) -> None:
        self.dir = directory
        self.dataset = dataset
        self.dt = dt
        self.run = run
        self.rows: dict[str, int] = {}
        self.inputs: list[str] = []
        self.extra: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        """Path for a file the caller writes itself (e.g. torch.save); it is committed with the rest."""
        return self.dir / name

    def write_table(self, df: pl.DataFrame, name: str = "part-0") -> Path:
        target = self.dir / f"{name}.parquet"
        df.write_parquet(target, statistics=True)
        self.rows[name] = df.height
        return target

    @contextlib.contextmanager
    def table_writer(self, name: str = "part-0") -> Iterator[TableWriter]:
        """Write `<name>.parquet` in pieces: `w.write(df)` per block, all blocks with one schema.

        For tables larger than memory (per-user-block stages). The file is complete when the block
        exits and is committed with the rest of the partition; its row count goes into the manifest.
        A block that writes nothing leaves no file unless `w.write` got an empty frame (schema only).
        """
        writer = TableWriter(self.dir / f"{name}.parquet")
        try:
            yield writer
        finally:
            writer.close()
        if writer.path.exists():
            self.rows[name] = writer.rows

    def write_json(self, name: str, obj: Any) -> Path:
        target = self.dir / name
        target.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        return target

    def add_inputs(self, *names: str) -> None:
        self.inputs.extend(names)

    def manifest(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "dt": self.dt.isoformat(),
            "run_id": self.run.run_id,
            "config_hash": self.run.config_hash,
            "code_revision": self.run.code_revision,
            "rows": self.rows,
            "input_partitions": sorted(set(self.inputs)),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **self.extra,
        }


@contextlib.contextmanager
def staged_partition(out: Path, dataset: str, dt: date, run: RunInfo) -> Iterator[StagedPartition]:
    """Stage a whole partition, then commit it atomically; on any exception nothing is committed.

    Inside the block, write files with `stage.write_table`, `stage.write_json` or to `stage.path(name)`,
    and add manifest fields to `stage.extra`. On exit the resolved config and `_manifest.json` (last) are
    written and the partition replaces `<out>/<dataset>/dt=<dt>` whole.
    """
    root = dataset_dir(out, dataset)
    root.mkdir(parents=True, exist_ok=True)
    scratch = staging_dir(out, dataset)
    scratch.mkdir(parents=True, exist_ok=True)
    _recover(out, dataset, dt)
    final = partition_dir(out, dataset, dt)
    tag = f"{run.run_id}-{uuid.uuid4().hex[:6]}"
    staging = scratch / f"{final.name}-{tag}"
    staging.mkdir()
    stage = StagedPartition(staging, dataset, dt, run)
    try:
        yield stage
        (staging / CONFIG_FILE).write_text(json.dumps(run.config, indent=2, sort_keys=True, default=str))
        for f in staging.iterdir():  # data files reach the disk before the manifest names them
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        write_json_atomic(staging / MANIFEST, stage.manifest())
        _fsync_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replaced = scratch / f"replaced-{final.name}-{tag}"
    if final.exists():
        os.rename(final, replaced)
    os.rename(staging, final)
    _fsync_dir(root)
    shutil.rmtree(replaced, ignore_errors=True)
    log.info("committed %s (%s)", final, stage.rows)


def clean_staging(out: Path, dataset: str) -> int:
    """Delete staging folders left by crashed runs; returns how many were removed."""
    root = staging_dir(out, dataset)
    n = 0
    for sub in root.glob("dt=*") if root.is_dir() else []:
        shutil.rmtree(sub, ignore_errors=True)
        n += 1
    return n


def lock_path(out: Path, dt: date) -> Path:
    """The lock file of the runs of date `dt` writing to `out` (see `pipelines.lock`)."""
    return Path(out) / LOCKS_DIR / f"dt={dt.isoformat()}.lock"


def write_latest(out: Path, dataset: str, dt: date, extra: dict[str, Any] | None = None) -> None:
    write_json_atomic(dataset_dir(out, dataset) / LATEST, {"dt": dt.isoformat(), **(extra or {})})


def read_latest(out: Path, dataset: str) -> date | None:
    path = dataset_dir(out, dataset) / LATEST
    if not path.is_file():
        return None
    return date.fromisoformat(json.loads(path.read_text())["dt"])


def write_report_file(out: Path, dt: date, name: str, payload: bytes | str) -> Path:
    """Reports live in <out>/reports/dt=D/ and are replaced atomically file by file."""
    d = partition_dir(out, "reports", dt)
    d.mkdir(parents=True, exist_ok=True)
    target = d / name
    tmp = d / f".{name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(payload.encode() if isinstance(payload, str) else payload)
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------- embedding cache and image inputs
#
# <out>/embeddings/_cache/<modality>/<model-slug>/chunk-<utc>-<uuid>.parquet
#
# Append-only: every chunk is written to a dot-named temp file, fsynced and renamed, so a reader sees
# whole chunks or none. Columns: model_id (str), content_hash (str), emb (Array[Float32, D]). One folder per
# model, because chunks of different models have different D. `_cache` is skipped by hive readers and is
# not a dt= partition, so committed_dates() and clean_staging() never see it.

EMBEDDING_CACHE_DIR = "_cache"


MAX_INPUT_FILE_BYTES: int = EmbeddingsConfig.model_fields["max_image_bytes"].default


def read_input_file(data: Path, rel: str, *, max_bytes: int = MAX_INPUT_FILE_BYTES) -> bytes | None:
    """Bytes of a file referenced by the inputs (e.g. items.image_path), or None when it must not be read.

    None when `rel` is rejected by the rules of `input_path_rejections` (not relative and normalised,
    outside `data` once links are resolved, missing, not a regular file, over `max_bytes`). The type and
    size are checked with stat before the file is opened, so a named pipe or a device is never opened;
    they are checked again on the open descriptor, and at most `max_bytes` + 1 bytes are read.
    """
    found = _confined_file(data, rel, max_bytes)
    if isinstance(found, Rejection):
        return None
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(found, flags)
    except OSError:  # replaced by a link or removed since the stat: treated like a missing file
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        payload = fh.read(max_bytes + 1)
    return payload if len(payload) <= max_bytes else None


@dataclass(frozen=True)
class Rejection:
    """Why a path named by the inputs is never opened: what such paths do (`"<n> image paths <reason>"`)
    and the fix."""

    reason: str
    fix: str


ABSOLUTE = Rejection("are absolute", "write paths relative to the data folder, e.g. images/123.jpg")
PARENT = Rejection("have '..' parts", "write paths inside the data folder without '..', e.g. images/123.jpg")
NOT_NORMALISED = Rejection(
    "are not normalised (empty, '.' or '//' parts, a trailing '/', backslashes or control characters)",
    "write normalised relative paths with / separators, e.g. images/123.jpg",
)
OUTSIDE = Rejection(
    "resolve outside the data folder through a symbolic link",
    "copy those files into the data folder instead of linking to them",
)
MISSING = Rejection("name no file", "copy the images under the data folder or set image_path to null")
NOT_REGULAR = Rejection(
    "name something other than a regular file (a folder, a named pipe, a device or a socket)",
    "point image_path at image files or set it to null",
)


def too_large(max_bytes: int) -> Rejection:
    return Rejection(
        f"name files larger than embeddings.max_image_bytes={max_bytes}",
        "shrink those images or raise embeddings.max_image_bytes",
    )


_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters and backslashes


def _lexical_rejection(rel: str) -> Rejection | None:
    """The rules a path must meet before the file system is asked anything.

    >>> [_lexical_rejection(p) is None for p in ("images/1.jpg", "a/../b", "/etc/passwd", "a//b", "")]
    [True, False, False, False, False]
    """
    if rel.startswith("/"):
        return ABSOLUTE
    parts = rel.split("/")
    if ".." in parts:
        return PARENT
    if _UNSAFE_CHARS.search(rel) or any(p in ("", ".") for p in parts):
        return NOT_NORMALISED
    return None


def _inside(real: str, root: str) -> bool:
    """True when the resolved path `real` is `root` or below it (both from os.path.realpath)."""
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _file_rejection(st: os.stat_result, max_bytes: int) -> Rejection | None:
    if not stat.S_ISREG(st.st_mode):
        return NOT_REGULAR
    if st.st_size > max_bytes:
        return too_large(max_bytes)
    return None


def _confined_file(data: Path, rel: str, max_bytes: int) -> str | Rejection:
    """The resolved path of one input file that may be opened, or why it may not (stat only)."""
    bad = _lexical_rejection(rel)
    if bad is not None:
        return bad
    real = os.path.realpath(Path(data) / rel)
    if not _inside(real, os.path.realpath(data)):
        return OUTSIDE
    try:
        st = os.stat(real)
    except OSError:
        return MISSING
    return _file_rejection(st, max_bytes) or real


def input_path_rejections(
    data: Path, rels: Iterable[str], *, max_bytes: int = MAX_INPUT_FILE_BYTES
) -> dict[str, Rejection]:
    """The paths among `rels` (items.image_path values, relative to `data`) that must not be opened.

    A path may be opened when it is relative and normalised (no leading '/', no '..', '.' or empty parts,
    '/' separators, no control characters), resolves inside `data` once symbolic links are resolved,
    names a regular file (not a folder, named pipe, device or socket) and that file has at most
    `max_bytes` bytes. Nothing is opened here: each distinct folder is resolved and listed once, then
    each listed file is stat-ed (a link is resolved first). `read_input_file` applies the same rules to
    one path.
    """
    root = os.path.realpath(data)
    rejected: dict[str, Rejection] = {}
    by_folder: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for rel in rels:
        bad = _lexical_rejection(rel)
        if bad is not None:
            rejected[rel] = bad
            continue
        folder, _, name = rel.rpartition("/")
        by_folder[folder].append((rel, name))
    for folder, members in sorted(by_folder.items()):  # one resolution and listing per distinct folder
        real = os.path.realpath(Path(data) / folder)
        if not _inside(real, root):
            rejected.update((rel, OUTSIDE) for rel, _ in members)
            continue
        try:
            with os.scandir(real) as it:
                entries = {e.name: e for e in it}
        except OSError:
            entries = {}
        for rel, name in members:  # one stat per named file that exists: IO, not row logic
            entry = entries.get(name)
            if entry is None:
                rejected[rel] = MISSING
                continue
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not _inside(target, root):
                        rejected[rel] = OUTSIDE
                        continue
                    st = os.stat(target)
                else:
                    st = entry.stat(follow_symlinks=False)
            except OSError:
                rejected[rel] = MISSING
                continue
            bad = _file_rejection(st, max_bytes)
            if bad is not None:
                rejected[rel] = bad
    return rejected


def _model_slug(model_id: str) -> str:
    """Readable, filesystem-safe and collision-free folder name of a model id."""
    import hashlib

    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._")[:60]
    return f"{readable}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


def embedding_cache_dir(out: Path, modality: str, model_id: str) -> Path:
    """Folder of the cache chunks of one modality ("text" / "image") and one model id."""
    return dataset_dir(out, EMBEDDINGS) / EMBEDDING_CACHE_DIR / modality / _model_slug(model_id)


def embedding_cache_files(out: Path, modality: str, model_id: str) -> list[Path]:
    d = embedding_cache_dir(out, modality, model_id)
    return sorted(d.glob("chunk-*.parquet")) if d.is_dir() else []


def scan_embedding_cache(out: Path, modality: str, model_id: str) -> pl.LazyFrame | None:
    """Lazy scan of the cached embeddings of one model: content_hash, emb; None when nothing is cached.

    A content hash cached twice (two runs racing) keeps its newest chunk's row; both rows hold the same vector.
    """
    files = embedding_cache_files(out, modality, model_id)
    if not files:
        return None
    return (
        pl.scan_parquet(files)
        .filter(pl.col("model_id") == model_id)
        .select("content_hash", "emb")
        .unique("content_hash", keep="last", maintain_order=True)
    )


def append_embedding_cache(out: Path, modality: str, model_id: str, df: pl.DataFrame) -> Path | None:
    """Add one chunk (columns content_hash, emb) to the cache of a model, atomically; None when df is empty."""
    if df.height == 0:
        return None
    missing = {"content_hash", "emb"} - set(df.columns)
    if missing:
        raise ValueError(f"append_embedding_cache: columns {sorted(missing)} are missing; fix: pass them")
    d = embedding_cache_dir(out, modality, model_id)
    d.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    target = d / f"chunk-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = d / f".{target.name}.tmp"
    df.select(pl.lit(model_id).alias("model_id"), "content_hash", "emb").write_parquet(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    _fsync_dir(d)
    return target
