from pathlib import Path

import psutil
import pytest
import torch

from pretrain.engine.checkpoints import (
    AtomicCheckpointIO,
    UnreadableCheckpointError,
    checkpoint_path,
    find_resume_checkpoint,
    read_checkpoint,
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


def test_choosing_a_checkpoint_reads_its_directory_not_its_data(tmp_path):
    # Every rank chooses the checkpoint to resume from: a CRC scan would read all of it once more per rank.
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 7, "weights": torch.randn(4_000_000)}, tmp_path / "step_000007.ckpt")
    process = psutil.Process()
    before = process.io_counters().read_chars
    assert find_resume_checkpoint(tmp_path).name == "step_000007.ckpt"
    assert process.io_counters().read_chars - before < 1_000_000  # of a 16 MB file
