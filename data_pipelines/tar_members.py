"""Tar shards on local disk read through a memory map: headers parsed in place, members sliced out.

Python's ``tarfile`` (which webdataset reads with) builds a TarInfo per member from a dozen Python-level field
conversions; for 32 px images that costs as much as decoding and augmenting them (bench/loader.py). Here a header
is one checksum, one size field and one name, and a member's bytes are one slice of the mapped file (the page
cache is shared by every worker reading the shard). Remote and compressed shards keep webdataset's reader.

Formats: POSIX ustar (with its name prefix), PAX extended headers (``path``, ``size``) and GNU long names, which
covers Python's, GNU tar's and webdataset's writers. Samples are grouped as webdataset groups them: consecutive
members with the same key (the name up to the first dot of its last component), lower-case extensions, metadata
members (``__name__``) skipped, a repeated member dropped with a warning. Two differences: members whose last
component starts with a dot (``._x.jpg``, macOS resource forks) are skipped, where webdataset makes a sample of
the folder; PAX global headers are ignored. Damage (a bad checksum, a malformed PAX record, a cut member) raises
``tarfile.ReadError`` after the samples before it.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

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
        _check_checksum(header, position)
        kind, start, size = header[156:157], position + BLOCK, _number(header[124:136])
        if kind not in (PAX_HEADER, PAX_GLOBAL_HEADER, GNU_LONG_NAME) and "size" in overrides:
            size = _decimal(overrides["size"])
        if size < 0 or start + size > len(archive):
            raise tarfile.ReadError(f"member at byte {position} runs past the end of the archive")
        if kind == PAX_HEADER:
            overrides.update(_pax_records(bytes(archive[start : start + size])))
        elif kind == GNU_LONG_NAME:
            overrides["path"] = bytes(archive[start : start + size]).rstrip(b"\x00").decode("utf-8", "surrogateescape")
        elif kind != PAX_GLOBAL_HEADER:  # global records set defaults for names and sizes that members give anyway
            if kind in REGULAR_TYPES:
                yield TarMember(overrides.get("path") or _name(header), start, size)
            overrides = {}
        position = start + -(-size // BLOCK) * BLOCK


@contextlib.contextmanager
def mapped_archive(path: Path | str, headers_only: bool = False) -> Iterator[mmap.mmap]:
    """A local tar file mapped into memory, read once from start to end (``headers_only``: only its headers are
    read, so the kernel reads no data ahead); an empty file is a read error."""
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            raise tarfile.ReadError(f"{path} is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as archive:
            advice = "MADV_RANDOM" if headers_only else "MADV_SEQUENTIAL"
            if hasattr(mmap, advice):
                archive.madvise(getattr(mmap, advice))
            yield archive


def sample_members(archive: bytes | mmap.mmap, path: Path | str) -> Iterator[tuple[str, dict[str, TarMember]]]:
    """(key, extension -> member) of each sample, grouped as webdataset groups them (see the module). Damage
    raises after the sample read up to it, as webdataset also yields that one."""
    key, members = None, {}
    try:
        for member in tar_members(archive):
            member_key, extension = split_member_name(member.name)
            if member_key is None:
                continue
            if member_key != key:
                if key is not None:
                    yield key, members
                key, members = member_key, {}
            if extension in members:  # webdataset also drops a repeated member and reads on
                logger.warning("skipping duplicate tar member %s in %s", member.name, path)
                continue
            members[extension] = member
    except tarfile.ReadError:
        if key is not None:
            yield key, members
        raise
    if key is not None:
        yield key, members


def local_tar_samples(path: Path, url: str) -> Iterator[dict[str, Any]]:
    """The samples of a local uncompressed tar shard, as webdataset's ``tarfile_samples`` yields them."""
    with mapped_archive(path) as archive:
        for key, members in sample_members(archive, path):
            data = {
                extension: archive[member.offset : member.offset + member.size] for extension, member in members.items()
            }
            yield {"__key__": key, "__url__": url, **data}


def sample_keys(path: Path) -> list[str]:
    """The keys of a local tar shard's samples in stored order, from the headers alone."""
    with mapped_archive(path) as archive:
        return [key for key, _ in sample_members(archive, path)]


def count_samples(path: Path | str) -> tuple[int, tarfile.ReadError | None]:
    """The samples of a local tar shard, from the headers alone, and the damage that ended the count early (None
    when the archive was read to its end): what a manifest's count of the shard is checked against."""
    count = 0
    try:
        with mapped_archive(path, headers_only=True) as archive:
            for _ in sample_members(archive, path):
                count += 1
    except tarfile.ReadError as error:
        return count, error
    return count, None


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


def _check_checksum(header: bytes, position: int) -> None:
    """The header's checksum field against the sum of its bytes (unsigned, or signed as old tars wrote it)."""
    stored, unsigned = _octal(header[148:156]), sum(header) - sum(header[148:156]) + 8 * ord(" ")
    if stored == unsigned:
        return
    high_bytes = sum(byte > 127 for byte in header[:148]) + sum(byte > 127 for byte in header[156:])
    if stored != unsigned - 256 * high_bytes:
        raise tarfile.ReadError(f"bad header checksum at byte {position}")


def _decimal(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise tarfile.ReadError(f"invalid PAX size {value!r}") from None


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
    while position < len(data) and data[position] != 0:
        length_end = data.find(b" ", position)
        if length_end <= position:
            raise tarfile.ReadError(f"malformed PAX record at byte {position} of its header")
        length = _decimal(data[position:length_end].decode("ascii", "replace"))
        if length <= length_end + 1 - position or position + length > len(data):  # "LEN " and more, within the data
            raise tarfile.ReadError(f"malformed PAX record at byte {position} of its header")
        key, _, value = data[length_end + 1 : position + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return {key: value for key, value in records.items() if key in ("path", "size")}
