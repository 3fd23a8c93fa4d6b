"""Read an offline W&B run back, so tests can assert what was logged.

wandb 0.31 ships no public reader for `run-<id>.wandb` files. The file is a LevelDB-style log
(https://github.com/google/leveldb/blob/main/doc/log_format.md) of `wandb_internal_pb2.Record` messages:

    file header:  ident b":W&B" (4 bytes) | magic 0xBEE1 (uint16) | version 0 (uint8)
    then 32 KiB blocks of chunks:
        checksum (uint32, crc32 of type byte + data) | length (uint16) | type (uint8) | data[length]
    type FULL holds a whole record; FIRST, MIDDLE..., LAST hold one record split across blocks.
    A block tail shorter than a chunk header is zero padding.

All integers are little-endian.

    from wandb_offline import read_offline_run   # tests/ is on sys.path through tests/conftest.py

    run = read_offline_run(tmp_path / "wandb")     # after run.finish(); waits for wandb-core's final flush
    assert run.values("train/loss") == [2.0, 1.5]
    assert run.images[0].is_file()
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK_LENGTH = 32768
IDENT = b":W&B"
MAGIC = 0xBEE1
CHUNK_FULL, CHUNK_FIRST, CHUNK_MIDDLE, CHUNK_LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run recorded; values are decoded JSON.

    `history` has one dict per logged step. W&B's own keys start with an underscore (`_step`, `_runtime`,
    `_timestamp`, `_wandb`). A logged media object is a nested dict, e.g. `row["reconstructions"]["path"]`
    is the image's path relative to `files/`. `files` lists the paths (relative to `files/`) W&B saved.
    """

    directory: Path
    run_id: str = ""
    group: str = ""
    name: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def values(self, key: str) -> list[Any]:
        """The values logged under `key`, in step order, skipping rows without it."""
        return [row[key] for row in self.history if key in row]

    @property
    def images(self) -> list[Path]:
        """Image files the run saved under `files/media/images`, sorted by name."""
        return sorted((self.directory / "files" / "media" / "images").glob("**/*.*"))


def iter_record_payloads(path: Path) -> Iterator[bytes]:
    """Yield the serialized `Record` payloads of a `.wandb` file in write order, checking every checksum."""
    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC or version != 0:
        raise ValueError(f"{path} is not a W&B record log (header {ident!r}, magic {magic:#x}, version {version})")
    offset = FILE_HEADER.size
    pending: bytearray | None = None
    while offset + CHUNK_HEADER.size <= len(data):
        space_in_block = BLOCK_LENGTH - offset % BLOCK_LENGTH
        if space_in_block < CHUNK_HEADER.size:
            offset += space_in_block
            continue
        checksum, length, chunk_type = CHUNK_HEADER.unpack_from(data, offset)
        if chunk_type == 0 and length == 0:
            offset += space_in_block
            continue
        start = offset + CHUNK_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) < length:
            raise ValueError(f"{path}: truncated chunk at byte {offset}")
        if zlib.crc32(chunk, zlib.crc32(bytes([chunk_type]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"{path}: checksum mismatch at byte {offset}")
        offset = start + length
        if chunk_type == CHUNK_FULL:
            yield bytes(chunk)
        elif chunk_type == CHUNK_FIRST:
            pending = bytearray(chunk)
        elif chunk_type in (CHUNK_MIDDLE, CHUNK_LAST) and pending is not None:
            pending += chunk
            if chunk_type == CHUNK_LAST:
                yield bytes(pending)
                pending = None
        else:
            raise ValueError(f"{path}: unexpected chunk type {chunk_type} at byte {offset}")


def iter_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Yield the parsed `Record` messages of a `.wandb` file."""
    for payload in iter_record_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def find_offline_run(wandb_dir: Path) -> Path:
    """The single `offline-run-*` directory under `wandb_dir` (the `wandb/` folder or its parent)."""
    wandb_dir = Path(wandb_dir)
    candidates = sorted(wandb_dir.glob("offline-run-*")) + sorted(wandb_dir.glob("wandb/offline-run-*"))
    if len(candidates) != 1:
        raise FileNotFoundError(f"expected one offline-run-* directory under {wandb_dir}, found {candidates}")
    return candidates[0]


def finished_records(record_file: Path, timeout_s: float = 30.0) -> list[wandb_internal_pb2.Record]:
    """All records of a finished run, waiting until wandb-core has written the run's `exit` record.

    `run.finish()` can return before wandb-core (a separate process) has flushed the file: right after it the
    file may hold only its header or end in a partly written chunk.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records, problem = list(iter_records(record_file)), "no exit record"
        except ValueError as error:
            records, problem = [], str(error)
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{record_file}: {problem} after {timeout_s} s; was the run finished?")
        time.sleep(0.05)


def read_offline_run(path: Path, timeout_s: float = 30.0) -> OfflineRun:
    """Read a finished offline run: `path` is its `offline-run-*` directory, or a folder holding exactly one."""
    path = Path(path)
    run_dir = path if path.name.startswith("offline-run-") else find_offline_run(path)
    (record_file,) = run_dir.glob("run-*.wandb")
    run = OfflineRun(directory=run_dir)
    for record in finished_records(record_file, timeout_s):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_nested(row, _item_path(item), _item_value(item))
            run.history.append(row)
        elif kind == "run":
            run.run_id, run.group, run.name = record.run.run_id, record.run.run_group, record.run.display_name
            _apply_updates(run.config, record.run.config.update)
            _apply_updates(run.summary, record.run.summary.update)
        elif kind == "config":
            _apply_updates(run.config, record.config.update)
            _apply_removals(run.config, record.config.remove)
        elif kind == "summary":
            _apply_updates(run.summary, record.summary.update)
            _apply_removals(run.summary, record.summary.remove)
        elif kind == "files":
            run.files.extend(item.path for item in record.files.files)
    return run


def _item_path(item: Any) -> list[str]:
    """W&B stores a top-level key in `key` or as a one-element `nested_key`; media objects as longer paths."""
    return [item.key] if item.key else list(item.nested_key)


def _set_nested(target: dict[str, Any], path: list[str], value: Any) -> None:
    for name in path[:-1]:
        target = target.setdefault(name, {})
    target[path[-1]] = value


def _item_value(item: wandb_internal_pb2.HistoryItem) -> Any:
    """wandb 0.31 writes `value_json`; the typed fields (`integer`, `number`, ...) are read for completeness."""
    if item.value_json:
        return json.loads(item.value_json)
    typed = item.WhichOneof("value")
    if typed in (None, "none"):
        return None
    return json.loads(item.json) if typed == "json" else getattr(item, typed)


def _apply_updates(target: dict[str, Any], items: Any) -> None:
    for item in items:
        _set_nested(target, _item_path(item), json.loads(item.value_json))


def _apply_removals(target: dict[str, Any], items: Any) -> None:
    for item in items:
        *parents, name = _item_path(item)
        for parent in parents:
            target = target.get(parent, {})
        target.pop(name, None)
