"""The training step reads device values on the host once per optimizer step (logging steps: at most once more),
counted over real Lightning steps of the real MAE module."""

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from yaml_defaults import composed, pretraining_module

from pretrain.engine.config import settings
from pretrain.engine.host_syncs import HostSyncCounter
from pretrain.engine.plan import plan_run
from pretrain.engine.run_checkpoints import RunCheckpoints
from pretrain.engine.signals import StopOnSignal, handle_signals
from pretrain.engine.step_metrics import StepThroughput

STEPS, LOG_EVERY = 12, 4
CPU = torch.device("cpu")


def test_the_counter_sees_item_float_bool_tolist_and_numpy_but_not_device_work():
    values = torch.randn(4)
    with HostSyncCounter(CPU) as syncs:
        total = (values * 2).sum()
        torch._foreach_norm([values, values])
    assert syncs.count == 0
    with HostSyncCounter(CPU) as syncs:
        total.item(), float(total), bool(total > 0), values.tolist(), values.numpy()
    assert syncs.count == 5, syncs.sites
    with HostSyncCounter(CPU) as syncs:
        values.nonzero(), values.masked_select(values > 0)  # outputs sized by the data
    assert syncs.count == 2, syncs.sites


def test_the_counter_leaves_out_the_optimizer_step_counters_torch_keeps_on_the_host():
    parameter = torch.nn.Parameter(torch.randn(3))
    parameter.grad = torch.randn(3)
    optimizer = torch.optim.AdamW([parameter])
    with HostSyncCounter(CPU) as syncs:
        optimizer.step()
    assert syncs.count == 0, syncs.sites


class StepMarks(Callback):
    """The counter's value at the end of every optimizer step."""

    def __init__(self, counter: HostSyncCounter) -> None:
        self.counter, self.marks = counter, []

    def on_train_batch_end(self, *args) -> None:
        self.marks.append(self.counter.count)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_one_host_read_per_optimizer_step_and_at_most_one_more_when_logging(tmp_path, accumulate):
    overrides = ("objective.decoder_embed_dim=32", "objective.decoder_depth=1", "objective.decoder_num_heads=4")
    config = settings(composed("pretrain", *overrides, "warmup_epochs=0", "data.batch_size=4"))
    config["trainer"]["accumulate_grad_batches"] = accumulate
    plan = plan_run(config["trainer"], 4, batches_per_epoch=STEPS * accumulate, steps=STEPS)
    module = pretraining_module(config, plan)
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.zeros(4, dtype=torch.long)}
    batches = [{**batch, "corrupt_skipped": torch.tensor(1)} for _ in range(STEPS * accumulate)]
    syncs = HostSyncCounter(CPU)
    marks = StepMarks(syncs)
    throughput = StepThroughput(4, lambda batch: batch["image"].shape[0], None)
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        accumulate_grad_batches=accumulate,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=LOG_EVERY,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[throughput, marks],
    )
    # Stop-signal handling rides on the step's one reduction: with it on, the count stays the same.
    with handle_signals({"slurm_auto_requeue": False}) as signals, syncs:
        checkpoints = RunCheckpoints(tmp_path / "checkpoints", every_n_steps=1000, keep=1)
        trainer.callbacks.append(StopOnSignal(signals, checkpoints))
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))

    per_step = np.diff(marks.marks[accumulate - 1 :: accumulate])  # from the end of step 1 (after Lightning's setup)
    logging = {step for step in range(2, STEPS + 1) if step % LOG_EVERY == 0}
    for step, count in zip(range(2, STEPS + 1), per_step, strict=True):
        assert count <= (2 if step in logging else 1), (step, count, syncs.sites)
    assert module.corrupt_samples == STEPS * accumulate  # the counts still arrive, through the one read
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    for name in ("train/loss", "train/grad_norm", "data/corrupt_samples_skipped", "train/device/samples_per_sec"):
        assert name in logged, f"{name} was not logged"
