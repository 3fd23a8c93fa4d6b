import errno
import os
import subprocess
import zipfile
from pathlib import Path

import psutil
import pytest
import torch

from pretrain.engine.checkpoints import (
    AtomicCheckpointIO,
    DiskFullError,
    UnreadableCheckpointError,
    _HashingWriter,
    checkpoint_path,
    damage,
    file_digest,
    find_resume_checkpoint,
    read_checkpoint,
    recorded_digest,
    remove_temporary_files,
    rotate_checkpoints,
    set_aside_newer,
)


def test_atomic_save_leaves_previous_file_intact_when_writing_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "step_000010.ckpt"
    io.save_checkpoint({"global_step": 10}, target)

    def crash(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 20}, target)
    monkeypatch.undo()
    assert read_checkpoint(target)["global_step"] == 10


def test_resume_picks_highest_complete_step(tmp_path):
    io = AtomicCheckpointIO()
    for step in (5, 10):
        io.save_checkpoint({"global_step": step}, tmp_path / f"step_{step:06d}.ckpt")
    (tmp_path / "step_000015.ckpt").write_bytes(b"PK\x03\x04truncated")
    assert find_resume_checkpoint(tmp_path).name == "step_000010.ckpt"


def test_checkpoints_named_before_the_rename_still_count_by_their_step(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 20}, tmp_path / "step=000020.ckpt")  # the name runs wrote before
    io.save_checkpoint({"global_step": 10}, tmp_path / "step_000010.ckpt")
    assert find_resume_checkpoint(tmp_path).name == "step=000020.ckpt"


def test_checkpoint_names_pass_hydra_overrides_unquoted():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    name = checkpoint_path(Path("outputs/demo/checkpoints"), 300)
    assert name.name == "step_000300.ckpt"
    (override,) = OverridesParser.create().parse_overrides([f"ckpt={name}"])
    assert override.value() == str(name)


def test_resume_finds_nothing_in_an_empty_or_missing_dir(tmp_path):
    assert find_resume_checkpoint(tmp_path) is None
    assert find_resume_checkpoint(tmp_path / "absent") is None


def test_unreadable_checkpoint_error_says_what_was_expected(tmp_path):
    bad = tmp_path / "model.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(UnreadableCheckpointError, match="Expected a Lightning .ckpt"):
        read_checkpoint(bad)


def save_steps(directory: Path, *steps: int, size: int = 1000) -> None:
    io = AtomicCheckpointIO()
    for step in steps:
        io.save_checkpoint({"global_step": step, "weights": torch.randn(size)}, checkpoint_path(directory, step))


def test_each_checkpoint_has_the_digest_of_its_bytes_beside_it(tmp_path):
    save_steps(tmp_path, 3)
    path = checkpoint_path(tmp_path, 3)
    assert recorded_digest(path) == file_digest(path)
    assert damage(path) is None


def overwrite_middle(path: Path, length: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        handle.write(os.urandom(length))


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


DAMAGE = {
    "truncated": lambda path: os.truncate(path, 1000),
    "empty": lambda path: os.truncate(path, 0),
    "random bytes": random_bytes,
    "corrupted in the middle": lambda path: overwrite_middle(path, 100_000),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_resume_skips_a_damaged_newest_checkpoint_and_sets_it_aside(tmp_path, kind):
    save_steps(tmp_path, 5, 10, size=200_000)
    newest = checkpoint_path(tmp_path, 10)
    DAMAGE[kind](newest)
    assert damage(newest) is not None
    assert find_resume_checkpoint(tmp_path).name == "step_000005.ckpt"
    assert newest.exists(), "a rank that is not rank 0 must leave the file where it is"
    assert find_resume_checkpoint(tmp_path, set_aside=True).name == "step_000005.ckpt"
    assert not newest.exists()
    assert (tmp_path / "damaged" / "step_000010.ckpt").exists(), "damaged files are kept, not deleted"
    assert find_resume_checkpoint(tmp_path, set_aside=True).name == "step_000005.ckpt"  # and never read again


def test_a_checkpoint_without_a_digest_is_checked_by_its_crcs(tmp_path):
    # Checkpoints of runs before digests: torch's zip members carry CRC-32s, a flipped byte breaks one.
    save_steps(tmp_path, 5, size=200_000)
    path = checkpoint_path(tmp_path, 5)
    path.with_name(path.name + ".sha256").unlink()
    assert damage(path) is None
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    with open(path, "r+b") as handle:
        handle.seek(member.header_offset + 200)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert "CRC" in damage(path)


def test_choosing_a_checkpoint_reads_only_down_to_the_first_good_one(tmp_path):
    # Every rank verifies what it resumes from: one read of the chosen file, none of the older ones.
    save_steps(tmp_path, 5, 7, size=4_000_000)
    process = psutil.Process()
    before = process.io_counters().read_chars
    assert find_resume_checkpoint(tmp_path).name == "step_000007.ckpt"
    read = process.io_counters().read_chars - before
    size = checkpoint_path(tmp_path, 7).stat().st_size
    assert size <= read < 1.5 * size


def test_rotation_counts_every_checkpoint_of_the_directory(tmp_path):
    save_steps(tmp_path, 1, 2, 3, 4, 5)  # e.g. written before and after a resume
    removed = rotate_checkpoints(tmp_path, keep=2)
    assert sorted(path.name for path in removed) == ["step_000001.ckpt", "step_000002.ckpt", "step_000003.ckpt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "step_000004.ckpt",
        "step_000004.ckpt.sha256",
        "step_000005.ckpt",
        "step_000005.ckpt.sha256",
    ]
    assert rotate_checkpoints(tmp_path, keep=-1) == []


def test_temporary_files_of_a_writer_that_died_are_removed(tmp_path):
    save_steps(tmp_path, 5)
    left = [tmp_path / ".step_000010.ckpt.tmp-4242", tmp_path / ".step_000010.ckpt.sha256.tmp-4242"]
    for path in left:
        path.write_bytes(b"half")
    assert sorted(remove_temporary_files(tmp_path)) == sorted(left)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step_000005.ckpt", "step_000005.ckpt.sha256"]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs where root may mount one, else None (the tests then inject ENOSPC)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        yield None
        return
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_removes_the_temporary_file_and_says_what_is_needed(tmp_path, small_disk, monkeypatch):
    directory = small_disk or tmp_path
    if small_disk is None:

        def full(writer, data):  # what the kernel answers on a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(_HashingWriter, "write", full)
    target = checkpoint_path(directory, 10)
    with pytest.raises(DiskFullError) as failure:
        AtomicCheckpointIO().save_checkpoint({"weights": torch.randn(1_000_000)}, target)  # 4 MB
    message = str(failure.value)
    assert message.startswith("no space left on device: about 4,000,000 bytes needed for step_000010.ckpt")
    assert f"free in {directory}" in message and "\n" not in message
    assert list(directory.iterdir()) == [], "the temporary file is gone, so a retry has the whole disk"


def test_rotation_never_removes_the_checkpoint_a_run_just_wrote(tmp_path):
    # A run resumed from an older step writes below the directory's newest checkpoints.
    save_steps(tmp_path, 3, 8, 9)
    own = checkpoint_path(tmp_path, 3)
    rotate_checkpoints(tmp_path, keep=2, protected=own)
    assert own.exists() and checkpoint_path(tmp_path, 8).exists() and checkpoint_path(tmp_path, 9).exists()


def test_checkpoints_newer_than_an_older_resume_are_set_aside(tmp_path):
    save_steps(tmp_path, 3, 8, 9)
    moved = set_aside_newer(tmp_path, 3)
    assert sorted(path.name for path in moved) == ["step_000008.ckpt", "step_000009.ckpt"]
    assert find_resume_checkpoint(tmp_path).name == "step_000003.ckpt"
    assert (tmp_path / "superseded" / "step_000009.ckpt.sha256").exists()


def test_a_read_error_is_raised_not_taken_for_damage(tmp_path, monkeypatch):
    # EIO or ESTALE says nothing about the bytes: the checkpoint must not be set aside for it.
    save_steps(tmp_path, 5)

    def failing_read(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("pretrain.engine.checkpoints.file_digest", failing_read)
    with pytest.raises(OSError, match="Input/output error"):
        find_resume_checkpoint(tmp_path, set_aside=True)
    assert checkpoint_path(tmp_path, 5).exists()
