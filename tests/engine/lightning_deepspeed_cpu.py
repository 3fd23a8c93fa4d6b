"""Our MAE module through Lightning's DeepSpeed strategy on CPU processes, for ``test_deepspeed_lightning.py``.

    PYTHONPATH=.:tests python -m torch.distributed.run --nproc_per_node=2 tests/engine/lightning_deepspeed_cpu.py \
        --zero-stage 3 --output-dir /tmp/ds --steps 6

Lightning refuses DeepSpeed without CUDA; the test-only strategy below skips that check and names the CPU as the
device (``../shared/stack-facts.md``). Everything else is the product: the module, optimizer and schedule from
``build_module``, the Trainer from ``build_trainer`` with our callbacks and CSV logger. Each rank trains on its own
fixed batches, ``--batches-per-epoch`` of them, repeated every epoch. Writes into ``--output-dir``: ``results.json``
(per-rank counters, the stop message, the loss dtypes, the optimizer DeepSpeed stepped, the logged grad norms) and
``parameters.pt`` (every parameter in full after the last step; ``start_parameters.pt``: before the first).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
from pathlib import Path

import torch

os.environ["DS_ACCELERATOR"] = "cpu"
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "vitfm" / "torch_extensions" / f"torch-{torch.__version__}")
)

import lightning as L  # noqa: E402
import torch.distributed as dist  # noqa: E402
from deepspeed_cpu_train import gathered_parameters  # noqa: E402
from lightning.fabric.utilities.seed import reset_seed  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy  # noqa: E402
from yaml_defaults import composed, pretraining_module  # noqa: E402

from pretrain.engine import trainer as trainer_factory  # noqa: E402
from pretrain.engine.config import settings  # noqa: E402
from pretrain.engine.module import NonFiniteLossError  # noqa: E402
from pretrain.engine.plan import plan_run  # noqa: E402
from pretrain.engine.universal_checkpoint import prepare_universal_resume  # noqa: E402

BATCH = 4
GLOBAL_BATCH = 8  # 2 processes x 4, or 1 process x 4 x 2 accumulated


class CpuDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy with its CUDA-only checks skipped: test-only, production keeps Lightning's."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", 0)  # DeepSpeed reads an index off the device (any index: one CPU)


class Probe(L.Callback):
    """Poisons the batches of chosen steps with a NaN pixel, stops (with a checkpoint) after a chosen step, and
    records the dtype of every loss."""

    def __init__(self, poison_steps: set[int], stop_after: int | None, checkpoint: Path) -> None:
        self.poison_steps, self.stop_after, self.checkpoint = poison_steps, stop_after, checkpoint
        self.loss_dtypes: set[str] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.poison_steps:
            images = batch["image"].clone()
            images[0, 0, 0, 0] = float("nan")
            batch["image"] = images

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_parameters = gathered_parameters(trainer.strategy.deepspeed_engine)  # after any restore

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.loss_dtypes.add(str(outputs["loss"].dtype))
        if self.stop_after is not None and trainer.global_step == self.stop_after:
            trainer.save_checkpoint(self.checkpoint)
            trainer.should_stop = True


def rank_batches(rank: int, count: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + rank)
    return [
        {"image": torch.rand(BATCH, 3, 32, 32, generator=generator), "corrupt_skipped": torch.tensor(1)}
        for _ in range(count)
    ]


def logged(run_dir: Path, name: str) -> list[float]:
    metrics = run_dir / "csv" / "metrics.csv"
    if not metrics.is_file():  # a resumed run with no step left to train
        return []
    rows = csv.DictReader(metrics.open())
    return [float(row[name]) for row in rows if row.get(name)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zero-stage", type=int, choices=(2, 3), required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batches-per-epoch", type=int, default=3)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--offload-optimizer", action="store_true")
    parser.add_argument("--poison-steps", default="", help="comma-separated steps whose batch gets a NaN pixel")
    parser.add_argument("--max-bad-steps", type=int, default=3)
    parser.add_argument("--stop-after", type=int, help="checkpoint and stop once this many steps are done")
    parser.add_argument("--resume", type=Path, help="a checkpoint of --stop-after to resume from")
    parser.add_argument("--processes", type=int, default=2, help="as many as torch.distributed.run starts")
    args = parser.parse_args()

    trainer_factory.STRATEGIES["deepspeed"] = functools.partial(
        trainer_factory.deepspeed_strategy, strategy_class=CpuDeepSpeedStrategy
    )
    overrides = (
        "objective.decoder_embed_dim=32",
        "objective.decoder_depth=1",
        "objective.decoder_num_heads=4",
        "warmup_epochs=0",
        f"trainer=deepspeed_zero{args.zero_stage}",
        "trainer.accelerator=cpu",
        f"trainer.devices={args.processes}",
        f"trainer.global_batch_size={GLOBAL_BATCH}",
        f"trainer.precision={args.precision}",
        f"trainer.offload_optimizer={str(args.offload_optimizer).lower()}",
        f"trainer.max_bad_steps={args.max_bad_steps}",
        "trainer.log_every_n_steps=1",
        "trainer.checkpoint_every_n_steps=1000",
        "trainer.progress_bar=false",
        f"data.batch_size={BATCH}",
    )
    config = settings(composed("pretrain", *overrides))
    run_dir = args.output_dir / "run"
    accumulate = GLOBAL_BATCH // (BATCH * args.processes)
    plan = plan_run(config["trainer"], BATCH, batches_per_epoch=args.batches_per_epoch * accumulate, steps=args.steps)
    L.seed_everything(config["seed"])  # as the app: the same initial weights on every rank and run
    module = pretraining_module(config, plan)
    logger_config = {**composed("pretrain", "logger=csv")["logger"]}
    probe = Probe(
        {int(step) for step in args.poison_steps.split(",") if step}, args.stop_after, args.output_dir / "stopped.ckpt"
    )
    trainer = trainer_factory.build_trainer(
        config["trainer"],
        logger_config,
        run_dir,
        run_config=config,
        plan=plan,
        batch_size_fn=lambda batch: batch["image"].shape[0],
        callbacks=[probe],
    )
    rank = trainer.global_rank
    batches = args.batches_per_epoch * plan.accumulate
    loader = torch.utils.data.DataLoader(rank_batches(rank, batches), batch_size=None)
    stopped_by = None
    try:
        if args.resume:
            # as the apps do, when the number of processes changed
            prepare_universal_resume(trainer, args.resume, config["trainer"]["universal_checkpoint_wait_s"])
        trainer.fit(module, train_dataloaders=loader, ckpt_path=str(args.resume) if args.resume else None)
    except NonFiniteLossError as error:
        stopped_by = str(error)
    engine = trainer.strategy.deepspeed_engine
    parameters = gathered_parameters(engine)
    counters = [None] * trainer.world_size
    dist.all_gather_object(counters, {"bad_steps": module.bad_steps_total, "corrupt": module.corrupt_samples})
    if rank == 0:
        torch.save(parameters, args.output_dir / "parameters.pt")
        torch.save(probe.start_parameters, args.output_dir / "start_parameters.pt")
        results = {
            "global_step": trainer.global_step,
            "counters_per_rank": counters,
            "stopped_by": stopped_by,
            "loss_dtypes": sorted(probe.loss_dtypes),
            "optimizer": type(engine.basic_optimizer).__name__,
            "optimizer_steps": sorted({int(state["step"]) for state in engine.basic_optimizer.state.values()}),
            "deepspeed_skipped_steps": engine.skipped_steps,
            "grad_norms": logged(run_dir, "train/grad_norm"),
            "losses": logged(run_dir, "train/loss"),
            "parameters_finite": all(bool(torch.isfinite(value).all()) for value in parameters.values()),
        }
        (args.output_dir / "results.json").write_text(json.dumps(results, indent=2))
    dist.barrier()


if __name__ == "__main__":
    main()
