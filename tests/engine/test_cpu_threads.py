"""Compute threads on CPU: every core the loader workers leave, as measured during a real fit."""

import time

import lightning as L
import pytest
import torch

from pretrain.engine.cpu_threads import LoaderAwareThreads, threads_beside_loader

PROBE_STEPS = 6


def test_compute_keeps_the_cores_a_light_loader_leaves_and_gives_back_busy_ones():
    assert threads_beside_loader(2, 0.05) == 2  # 32 px PNGs: a worker at 5% of a core
    assert threads_beside_loader(2, 0.9) == 1
    assert threads_beside_loader(8, 3.4) == 5
    assert threads_beside_loader(2, 4.0) == 1  # never below one


class Samples(torch.utils.data.Dataset):
    """Each sample costs its worker 30 ms, spent either computing (``busy``) or sleeping."""

    def __init__(self, busy: bool) -> None:
        self.busy = busy

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> torch.Tensor:
        deadline = time.perf_counter() + 0.03
        while self.busy and time.perf_counter() < deadline:
            pass
        if not self.busy:
            time.sleep(0.03)
        return torch.randn(8)


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize(("busy", "expected_cores"), [(True, (0.5, 1.5)), (False, (0.0, 0.3))])
def test_the_loader_workers_cpu_use_is_measured_over_the_probe_steps(busy, expected_cores):
    policy = LoaderAwareThreads(cores=2, probe_steps=PROBE_STEPS)
    trainer = L.Trainer(
        max_steps=PROBE_STEPS + 3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[policy],
    )
    threads_before = torch.get_num_threads()
    try:
        loader = torch.utils.data.DataLoader(Samples(busy), batch_size=2, num_workers=1)
        trainer.fit(Regression(), train_dataloaders=loader)
        low, high = expected_cores
        assert policy.loader_cores is not None and low <= policy.loader_cores <= high, policy.loader_cores
        assert torch.get_num_threads() == threads_beside_loader(2, policy.loader_cores)
    finally:
        torch.set_num_threads(threads_before)
