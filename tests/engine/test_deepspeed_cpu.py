"""DeepSpeed ZeRO-2 and ZeRO-3 for real, with 2 CPU processes, on our MAE; then its checkpoint into a backbone.

Lightning's DeepSpeed strategy refuses CPU, so ``deepspeed_cpu_train.py`` drives DeepSpeed's engine under
``torch.distributed.run`` in a subprocess (one run per stage, shared by the tests of that stage). The first run on
a machine JIT-compiles one DeepSpeed op into ``TORCH_EXTENSIONS_DIR`` (about a minute); later runs take ~20 s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pretrain.engine.backbone_io import load_backbone, read_backbone_state
from pretrain.models.vit import VisionTransformer

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("deepspeed_cpu_train.py")
STEPS = 6
RUN_TIMEOUT_S = 600  # room for the one-time op compile on two busy cores


@dataclass
class ZeroRun:
    stage: int
    results: dict
    checkpoint_dir: Path
    gathered: dict[str, torch.Tensor]  # every parameter of the engine's model after the last step, in full

    def encoder_weights(self) -> dict[str, torch.Tensor]:
        prefix = "encoder."
        return {name[len(prefix) :]: value for name, value in self.gathered.items() if name.startswith(prefix)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_errors(output: str) -> str:
    """DeepSpeed's warnings and rank 0's traceback (the launcher prefixes it ``[rank0]:``), else the output's end."""
    lines = [line for line in output.splitlines() if "[WARNING]" in line or line.startswith("[rank0]:")]
    return "\n".join(lines[-40:]) if lines else output[-6000:]


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def zero_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ZeroRun:
    stage = request.param
    output_dir = tmp_path_factory.mktemp(f"zero{stage}")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    rendezvous = ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    arguments = [f"--zero-stage={stage}", f"--output-dir={output_dir}", f"--steps={STEPS}"]
    command = [*launcher, *rendezvous, str(SCRIPT), *arguments]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    errors = worker_errors(run.stdout + run.stderr)
    assert run.returncode == 0, f"ZeRO-{stage} run failed (exit {run.returncode}):\n{errors}"
    return ZeroRun(
        stage=stage,
        results=json.loads((output_dir / "results.json").read_text()),
        checkpoint_dir=output_dir / "checkpoint",
        gathered=torch.load(output_dir / "gathered.pt", weights_only=True),
    )


def test_training_loss_decreases(zero_run: ZeroRun) -> None:
    losses = zero_run.results["losses"]
    assert len(losses) == STEPS
    assert losses[-1] < 0.8 * losses[0], losses


def test_each_rank_holds_half_of_the_optimizer_state(zero_run: ZeroRun) -> None:
    per_rank = zero_run.results["optimizer_state_elements_per_rank"]
    trainable = zero_run.results["trainable_parameters"]
    assert len(per_rank) == 2
    assert sum(per_rank) >= trainable, "the partitions together must cover every trainable parameter"
    for elements in per_rank:
        assert abs(elements - trainable / 2) <= 0.01 * trainable, (per_rank, trainable)


def test_consolidated_checkpoint_equals_the_trained_parameters(zero_run: ZeroRun) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(zero_run.checkpoint_dir))
    assert set(consolidated) == set(zero_run.gathered)
    for name, expected in zero_run.gathered.items():
        assert consolidated[name].dtype == torch.float32, name
        torch.testing.assert_close(consolidated[name], expected, rtol=0, atol=1e-6, msg=name)


def test_backbone_reader_returns_exactly_the_encoder_weights(zero_run: ZeroRun) -> None:
    state, _ = read_backbone_state(zero_run.checkpoint_dir)
    encoder = zero_run.encoder_weights()
    assert "blocks.0.attn.qkv.weight" in state
    assert set(state) == set(encoder), f"not encoder keys: {sorted(set(state) ^ set(encoder))}"
    for name, expected in encoder.items():
        torch.testing.assert_close(state[name], expected, rtol=0, atol=1e-6, msg=name)


def test_backbone_reader_finds_the_metadata_saved_as_client_state(zero_run: ZeroRun) -> None:
    _, meta = read_backbone_state(zero_run.checkpoint_dir)
    files = sorted(path.name for path in zero_run.checkpoint_dir.rglob("*"))
    assert meta is not None, f"client state 'vitfm' not found among {files}"
    assert meta.step == STEPS
    assert meta.options["pos_embed"] == "sincos"


def test_load_backbone_rebuilds_the_encoder_strictly(zero_run: ZeroRun) -> None:
    backbone, meta = load_backbone(zero_run.checkpoint_dir)
    assert isinstance(backbone, VisionTransformer)
    loaded = backbone.state_dict()
    encoder = zero_run.encoder_weights()
    assert set(loaded) == set(encoder)
    for name, expected in encoder.items():
        torch.testing.assert_close(loaded[name], expected, rtol=0, atol=1e-6, msg=name)
