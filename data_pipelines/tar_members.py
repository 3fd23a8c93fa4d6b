"""Tar shards on local disk read through a memory map: headers parsed in place, members sliced out.

Python's ``tarfile`` (which webdataset reads with) builds a TarInfo per member from a dozen Python-level field
conversions; for 32 px images that costs as much as decoding and augmenting them (bench/loader.py). Here a header
is one checksum, one size field and one name, and a member's bytes are one slice of the mapped file (the page
cache is shared by every worker reading the shard). Remote and compressed shards keep webdataset's reader.

Formats: POSIX ustar (with its name prefix), PAX extended headers (``path``, ``size``) and GNU long names, which
covers Python's, GNU tar's and webdataset's writers. Samples are grouped as webdataset groups them: consecutive
members with the same key (the name up to the first dot of its last component), lower-case extensions, metadata
members (``__name__``) skipped. Damage (a bad checksum, a cut member) raises ``tarfile.ReadError`` after the
samples before it.
"""

from __future__ import annotations

import mmap
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

BLOCK = 512
REGULAR_TYPES = (b"0", b"\x00", b"7")
PAX_HEADER, PAX_GLOBAL_HEADER, GNU_LONG_NAME = b"x", b"g", b"L"
META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


class TarMember(NamedTuple):
    name: str
    offset: int  # of the member's data in the archive
    size: int


def tar_members(archive: bytes | mmap.mmap) -> Iterator[TarMember]:
    """The regular files of an uncompressed tar archive in stored order, up to its end-of-archive block."""
    position, overrides = 0, {}
    while True:
        header = archive[position : position + BLOCK]
        if len(header) < BLOCK or header.count(0) == BLOCK:
            if len(header) and header.count(0) != len(header):
                raise tarfile.ReadError(f"truncated header at byte {position}")
            return
        stored, computed = _octal(header[148:156]), sum(header) - sum(header[148:156]) + 8 * ord(" ")
        if stored != computed:
            raise tarfile.ReadError(f"bad header checksum at byte {position}")
        size, kind, start = _number(header[124:136]), header[156:157], position + BLOCK
        if start + size > len(archive):
            raise tarfile.ReadError(f"member at byte {position} runs past the end of the archive")
        data = archive[start : start + size] if kind in (PAX_HEADER, GNU_LONG_NAME) else b""
        if kind == PAX_HEADER:
            overrides.update(_pax_records(bytes(data)))
        elif kind == GNU_LONG_NAME:
            overrides["path"] = bytes(data).rstrip(b"\x00").decode("utf-8", "surrogateescape")
        elif kind != PAX_GLOBAL_HEADER:
            size = int(overrides.get("size", size))
            if kind in REGULAR_TYPES:
                yield TarMember(overrides.get("path") or _name(header), start, size)
            overrides = {}
        position = start + -(-size // BLOCK) * BLOCK


def local_tar_samples(path: Path, url: str) -> Iterator[dict[str, Any]]:
    """The samples of a local uncompressed tar shard, as webdataset's ``tarfile_samples`` yields them."""
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            raise tarfile.ReadError(f"{path} is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as archive:
            if hasattr(mmap, "MADV_SEQUENTIAL"):
                archive.madvise(mmap.MADV_SEQUENTIAL)
            sample: dict[str, Any] | None = None
            try:
                for member in tar_members(archive):
                    key, extension = split_member_name(member.name)
                    if key is None:
                        continue
                    if sample is None or sample["__key__"] != key:
                        if sample is not None:
                            yield sample
                        sample = {"__key__": key, "__url__": url}
                    if extension in sample:
                        raise tarfile.ReadError(f"{member.name}: duplicate member in {path}")
                    sample[extension] = archive[member.offset : member.offset + member.size]
            except tarfile.ReadError:
                if sample is not None:  # what was read before the damage, as webdataset also yields it
                    yield sample
                raise
            if sample is not None:
                yield sample


def split_member_name(name: str) -> tuple[str | None, str]:
    """(key, lower-case extension) of a member name as webdataset splits it; key None for members it skips."""
    if META_MEMBER.match(name):
        return None, ""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem:
        return None, ""
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def _name(header: bytes) -> str:
    name = header[:100].split(b"\x00", 1)[0]
    if header[257:263] == b"ustar\x00":  # POSIX: a prefix of up to 155 bytes holds the leading directories
        prefix = header[345:500].split(b"\x00", 1)[0]
        name = prefix + b"/" + name if prefix else name
    return name.decode("utf-8", "surrogateescape")


def _octal(field: bytes) -> int:
    digits = field.split(b"\x00", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise tarfile.ReadError(f"invalid number field {field!r}") from None


def _number(field: bytes) -> int:
    """A size field: octal digits, or GNU's base-256 (first byte 0x80) for members over 8 GiB."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    return _octal(field)


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d key=value\\n"`` records; only ``path`` and ``size`` change how a member is read."""
    records, position = {}, 0
    while position < len(data):
        length_end = data.index(b" ", position)
        length = int(data[position:length_end])
        key, _, value = data[length_end + 1 : position + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        position += length
    return {key: value for key, value in records.items() if key in ("path", "size")}
