"""What runs print: the progress bar's epochs, Lightning's untrue messages left out, the loaders' resume layout."""

import logging
import warnings

from pretrain.engine.console import RunProgressBar, frozen_parts_expected, quiet_lightning
from pretrain.engine.plan import RunPlan
from pretrain.engine.positioned_loader import StepPositionedLoader


def test_the_progress_bar_counts_epochs_against_the_run_not_minus_two():
    plan = RunPlan(num_nodes=1, devices=1, batch_size=16, accumulate=2, batches_per_epoch=10, total_steps=23)
    bar = RunProgressBar(plan)  # 5 steps an epoch: 23 steps end in the 5th
    assert bar._get_train_description(0) == "Epoch 1/5"
    assert bar._get_train_description(4) == "Epoch 5/5"


def test_lightnings_suppressed_messages_are_left_out_and_others_kept(caplog):
    quiet_lightning()
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=lightning_log.name):
        lightning_log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        lightning_log.info("GPU available: False, used: False")
    assert [record.getMessage() for record in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        quiet_lightning()  # catch_warnings reset the filters
        warnings.warn(
            "You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a "
            "`LightningDataModule`. It will use the implementation from `LightningModule` instance.",
            stacklevel=1,
        )
        warnings.warn("some other warning", stacklevel=1)
    assert [str(warning.message) for warning in caught] == ["some other warning"]


def test_the_eval_mode_warning_is_left_out_only_where_a_frozen_part_is_expected():
    message = "Found 12 module(s) in eval mode at the start of training. This may lead to unexpected behavior"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        with frozen_parts_expected():
            warnings.warn(message, stacklevel=1)
        warnings.warn(message, stacklevel=1)  # a full fine-tune with a module left in eval mode: a real bug
    assert [str(warning.message) for warning in caught] == [message]


def test_a_resume_with_another_data_layout_is_told_and_the_same_layout_is_quiet(caplog):
    layout = {"world_size": 2, "batch_size": 16, "accumulate": 1, "batches_per_epoch": 40, "seed": 0}
    saved = StepPositionedLoader(range(3), layout, 40).state_dict()
    with caplog.at_level(logging.WARNING):
        StepPositionedLoader(range(3), layout, 40).load_state_dict(saved)
        assert not caplog.records
        StepPositionedLoader(range(3), {**layout, "world_size": 1}, 40).load_state_dict(saved)
    assert "world_size 2 -> 1" in caplog.text


def test_a_positioned_loader_yields_the_rest_of_the_epoch_and_counts_the_whole_epoch():
    loader = StepPositionedLoader(range(3, 8), {}, 8)  # a resumed epoch of 8 batches, 3 already consumed
    assert list(loader) == list(range(3, 8)) and len(loader) == 8
