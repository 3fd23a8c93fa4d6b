"""The memory-mapped tar reader yields exactly webdataset's samples, for every tar dialect, and stops at damage."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from data_pipelines.tar_members import local_tar_samples, sample_keys, tar_members

LONG_DIRECTORY = "a-directory-name-long-enough/" * 5  # over 100 bytes: ustar prefix, PAX path or GNU long name
MEMBERS = [
    ("000001.jpg", b"\xff\xd8 first image"),
    ("000001.cls", b"3"),
    ("000001.seg.png", b"mask bytes"),
    (f"{LONG_DIRECTORY}000002.JPG", b"second, in a directory, upper-case extension"),
    (f"{LONG_DIRECTORY}000002.cls", b"7"),
    ("__index__", b"webdataset metadata"),
    ("no_extension", b"skipped"),
    ("000003.json", b"x" * 1500),  # several blocks
    ("000003.empty", b""),
    ("ümlaut-é.txt", b"non-ASCII name"),
]


def write_archive(path: Path, tar_format: int, members=MEMBERS) -> Path:
    with tarfile.open(path, "w", format=tar_format) as archive:
        directory = tarfile.TarInfo("a-directory")
        directory.type = tarfile.DIRTYPE
        archive.addfile(directory)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def webdataset_samples(path: Path) -> list[dict]:
    return list(wds.tariterators.tarfile_samples([{"url": str(path)}]))


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_samples_equal_webdatasets_for_every_tar_dialect(tmp_path: Path, tar_format: int) -> None:
    members = MEMBERS if tar_format != tarfile.USTAR_FORMAT else [m for m in MEMBERS if m[0].isascii()]
    path = write_archive(tmp_path / "shard.tar", tar_format, members)
    ours = list(local_tar_samples(path, str(path)))
    assert ours == webdataset_samples(path)
    assert [sample["__key__"] for sample in ours][:2] == ["000001", f"{LONG_DIRECTORY}000002"]


def test_webdataset_written_shards_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "written-000000.tar"
    with wds.TarWriter(str(path)) as writer:
        for index in range(5):
            writer.write({"__key__": f"{index:06d}", "png": bytes([index]) * 700, "cls": str(index).encode()})
    assert list(local_tar_samples(path, str(path))) == webdataset_samples(path)


def test_member_offsets_point_at_their_data(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "shard.tar", tarfile.PAX_FORMAT)
    data = path.read_bytes()
    contents = {member.name: data[member.offset : member.offset + member.size] for member in tar_members(data)}
    assert contents == dict(MEMBERS)


def test_a_cut_shard_yields_the_samples_before_the_cut_then_raises(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "shard.tar", tarfile.PAX_FORMAT)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"x" * 1500) + 700])  # inside sample 000003's json
    read = []
    with pytest.raises(tarfile.ReadError, match="past the end"):
        for sample in local_tar_samples(path, str(path)):
            read.append(sample["__key__"])
    assert read == ["000001", f"{LONG_DIRECTORY}000002"]


def test_a_damaged_header_raises_instead_of_yielding_garbage(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "shard.tar", tarfile.GNU_FORMAT)
    data = bytearray(path.read_bytes())
    data[data.index(b"000001.cls") + 3] ^= 0xFF  # a name byte of the second member's header
    path.write_bytes(bytes(data))
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(local_tar_samples(path, str(path)))


def test_an_empty_file_is_a_read_error(tmp_path: Path) -> None:
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(tarfile.ReadError, match="empty"):
        list(local_tar_samples(tmp_path / "empty.tar", "empty.tar"))


def test_a_malformed_pax_record_is_a_read_error_not_a_hang(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "shard.tar", tarfile.PAX_FORMAT)
    data = bytearray(path.read_bytes())
    record = data.index(b" path=")  # the long name's PAX record, at the start of its header's data block
    start = record - record % 512
    data[start:record] = b"0" * (record - start)  # its length: 0, which would never advance
    path.write_bytes(bytes(data))
    with pytest.raises(tarfile.ReadError, match="malformed PAX record"):
        list(local_tar_samples(path, str(path)))


def test_a_repeated_member_is_dropped_and_reading_goes_on(tmp_path: Path) -> None:
    members = [("a.jpg", b"first"), ("a.jpg", b"again"), ("a.cls", b"1"), ("b.jpg", b"next")]
    path = write_archive(tmp_path / "shard.tar", tarfile.PAX_FORMAT, members)
    samples = list(local_tar_samples(path, str(path)))
    assert [(sample["__key__"], sample.get("jpg"), sample.get("cls")) for sample in samples] == [
        ("a", b"first", b"1"),
        ("b", b"next", None),
    ]


def test_signed_checksums_of_old_tars_are_accepted(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "shard.tar", tarfile.GNU_FORMAT, [("\u00e9t\u00e9.jpg", b"summer")])
    data = bytearray(path.read_bytes())
    block = data[:512]  # its name's UTF-8 bytes are over 127: signed and unsigned sums differ
    signed = sum(byte - 256 if byte > 127 else byte for byte in block[:148] + block[156:]) + 8 * ord(" ")
    data[148:156] = f"{signed:06o}\0 ".encode()
    path.write_bytes(bytes(data))
    assert [sample["jpg"] for sample in local_tar_samples(path, str(path))] == [b"summer"]


def test_sample_keys_are_the_keys_of_the_samples_read(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "shard.tar", tarfile.PAX_FORMAT)
    assert sample_keys(path) == [sample["__key__"] for sample in local_tar_samples(path, str(path))]
