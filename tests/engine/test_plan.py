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
    # 39 batches a rank an epoch, accumulated by 2: Lightning steps on the odd last batch too, so 20 steps.
    assert plan.batches_per_epoch == 10_000 // (32 * 8) == 39 and plan.steps_per_epoch == 20
    assert plan.total_steps == 3 * plan.steps_per_epoch


def test_a_global_batch_sets_the_accumulation_for_any_number_of_processes():
    for devices, accumulate in ((1, 4), (2, 2), (4, 1)):
        plan = plan_run({**TRAINER, "devices": devices, "global_batch_size": 64}, 16, samples_per_epoch=6_400)
        assert (plan.accumulate, plan.global_batch, plan.steps_per_epoch) == (accumulate, 64, 100)


def test_a_global_batch_that_cannot_be_split_or_disagrees_says_what_to_change():
    with pytest.raises(ValueError, match="choose a data.batch_size that divides 32"):
        plan_run({**TRAINER, "devices": 2, "global_batch_size": 64}, 24, samples_per_epoch=6_400)
    with pytest.raises(ValueError, match="accumulate_grad_batches=3 disagrees"):
        plan_run({**TRAINER, "global_batch_size": 64, "accumulate_grad_batches": 3}, 16, samples_per_epoch=6_400)


def test_the_resume_position_is_the_epoch_and_the_batches_of_it_consumed():
    plan = plan_run({**TRAINER, "accumulate_grad_batches": 2}, 8, batches_per_epoch=10, epochs=3)
    assert [plan.resume_position(step) for step in (0, 3, 5, 7)] == [(0, 0), (0, 6), (1, 0), (1, 4)]


def test_max_steps_caps_the_epochs_and_a_fixed_epoch_length_wins_over_samples():
    plan = plan_run({**TRAINER, "max_steps": 5}, 16, samples_per_epoch=10_000, batches_per_epoch=12, epochs=100)
    assert plan.total_steps == 5 and plan.batches_per_epoch == 12


def test_auto_devices_on_cpu_is_one_process_and_nonsense_is_refused():
    assert plan_run({**TRAINER, "devices": "auto"}, 8, samples_per_epoch=64).world_size == 1
    with pytest.raises(ValueError, match="trainer.devices=0"):
        plan_run({**TRAINER, "devices": 0}, 8, samples_per_epoch=64)
