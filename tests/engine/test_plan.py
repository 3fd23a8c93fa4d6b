"""The run plan: world size, global batch, epoch length and total steps, settled before the Trainer exists."""

import pytest
from yaml_defaults import composed

from pretrain.engine.config import settings
from pretrain.engine.plan import plan_run

TRAINER = settings(composed("pretrain", "trainer.max_steps=null")["trainer"])


def test_the_plan_multiplies_out_nodes_devices_and_accumulation():
    trainer = {**TRAINER, "num_nodes": 2, "devices": 4, "accumulate_grad_batches": 2}
    plan = plan_run(trainer, 32, samples_per_epoch=10_000, epochs=3)
    assert plan.world_size == 8 and plan.global_batch == 32 * 8 * 2
    assert plan.batches_per_epoch == 10_000 // (32 * 8) and plan.steps_per_epoch == plan.batches_per_epoch // 2
    assert plan.total_steps == 3 * plan.steps_per_epoch


def test_max_steps_caps_the_epochs_and_a_fixed_epoch_length_wins_over_samples():
    plan = plan_run({**TRAINER, "max_steps": 5}, 16, samples_per_epoch=10_000, batches_per_epoch=12, epochs=100)
    assert plan.total_steps == 5 and plan.batches_per_epoch == 12


def test_auto_devices_on_cpu_is_one_process_and_nonsense_is_refused():
    assert plan_run({**TRAINER, "devices": "auto"}, 8, samples_per_epoch=64).world_size == 1
    with pytest.raises(ValueError, match="trainer.devices=0"):
        plan_run({**TRAINER, "devices": 0}, 8, samples_per_epoch=64)
