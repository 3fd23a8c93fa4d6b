"""The pretraining config checked against itself and the shards before anything is built.

A value outside its range fails at start-up with one line that names the key, the value, the valid range and
what to do, instead of failing steps later in a tensor operation, after a run that trained nothing, or not at
all (a batch larger than the shards repeats images). Pure functions of the resolved config, the shards'
manifest (:func:`data_pipelines.manifest.read_manifest`; ``total`` None for ``pipe:``/``http`` shards without
one) and the run plan: no Hydra. The objective's own values are checked by its module (``Objective.check``),
with the range checks below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from pretrain.engine.plan import RunPlan, accumulation, devices_per_node
from pretrain.objectives.objective import objective_named


class Count(NamedTuple):
    """A setting that counts something: its least value, what it counts, what null means (None: not allowed), and
    one value below the least with a meaning of its own (e.g. -1: all)."""

    minimum: int
    meaning: str
    null: str | None = None
    special: tuple[int, str] | None = None


COUNTS = {
    "data.batch_size": Count(1, "images per device and micro-batch"),
    "data.num_workers": Count(0, "loader processes per device (0: the training process loads the data)"),
    "data.batches_per_epoch": Count(1, "batches per rank and epoch", "the manifest's images / the global batch"),
    "trainer.num_nodes": Count(1, "the number of machines"),
    "trainer.accumulate_grad_batches": Count(1, "micro-batches per optimizer step"),
    "trainer.global_batch_size": Count(1, "images per optimizer step", "batch size x processes x accumulation"),
    "trainer.max_steps": Count(1, "the cap on optimizer steps", "the epochs decide the length"),
    "trainer.checkpoint_every_n_steps": Count(1, "optimizer steps between checkpoints"),
    "trainer.keep_checkpoints": Count(1, "the number of newest checkpoints kept", special=(-1, "all")),
    "trainer.log_every_n_steps": Count(1, "optimizer steps between logged metrics"),
    "trainer.max_bad_steps": Count(1, "non-finite steps in a row that stop the run"),
    "trainer.throughput_window": Count(1, "optimizer steps averaged for images/s"),
    "trainer.cpu_thread_probe_steps": Count(1, "the steps that measure the loader workers' CPU use"),
    "logger.log_images_every_n_steps": Count(0, "steps between reconstruction panels (0: none)"),
    "logger.num_images": Count(0, "images per reconstruction panel"),
}


class ConfigValueError(ValueError):
    """A config value outside its valid range; the message names the key, the value, the range and the fix."""


def check_pretraining_config(config: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigValueError` for the first value of ``config`` that cannot train on these shards."""
    for key, count in COUNTS.items():
        check_count(key, setting(config, key), count)
    check_epochs(config)
    objective_named(config["objective"]["name"]).check(config["objective"], manifest)
    if manifest["total"] is not None:
        check_global_batch(config, manifest["total"])


def check_pretraining_plan(config: Mapping[str, Any], plan: RunPlan) -> None:
    """Raise :class:`ConfigValueError` when ``epochs`` of this plan round to no optimizer step at all."""
    if plan.total_steps < 1:
        raise ConfigValueError(
            f"epochs={config['epochs']} is too short: at {plan.steps_per_epoch} optimizer steps an epoch it rounds "
            f"to 0 steps; give epochs >= {1 / plan.steps_per_epoch:.3g}"
        )


def setting(config: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` (``trainer.max_steps``)."""
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_count(key: str, value: Any, count: Count) -> None:
    """``value`` must be a whole number >= ``count.minimum`` (or null where ``count`` allows it)."""
    if value is None and count.null is not None:
        return
    whole = isinstance(value, int) and not isinstance(value, bool)
    if whole and (value >= count.minimum or (count.special is not None and value == count.special[0])):
        return
    valid, fix = f"a whole number >= {count.minimum}", f"set {key}={count.minimum} or more"
    if count.special is not None:
        valid = f"{valid} or {count.special[0]} ({count.special[1]})"
    if count.null is not None:
        valid, fix = f"{valid} or null ({count.null})", f"{fix}, or null"
    raise ConfigValueError(f"{key}={value!r} is out of range: {count.meaning} must be {valid}; {fix}")


def check_epochs(config: Mapping[str, Any]) -> None:
    """A run of no epochs trains nothing; a negative warmup is meaningless."""
    epochs, warmup = config["epochs"], config["warmup_epochs"]
    if not is_number(epochs) or epochs <= 0:
        raise ConfigValueError(
            f"epochs={epochs!r} is out of range: the run's length in epochs of the shards must be > 0; "
            "give epochs > 0 (trainer.max_steps caps a short run)"
        )
    if not is_number(warmup) or warmup < 0:
        raise ConfigValueError(
            f"warmup_epochs={warmup!r} is out of range: it must be >= 0 (epochs of linear learning-rate warmup); "
            "give warmup_epochs=0 for none"
        )


def check_mask_ratio(mask_ratio: Any) -> None:
    """MAE needs masked patches to reconstruct (ratio > 0) and visible ones to encode (ratio < 1)."""
    if is_number(mask_ratio) and 0 < mask_ratio < 1:
        return
    raise ConfigValueError(
        f"objective.mask_ratio={mask_ratio!r} is out of range: MAE masks a fraction of the patches strictly between "
        "0 and 1 (0 leaves nothing to reconstruct and no loss, 1 leaves the encoder nothing to see); "
        "set objective.mask_ratio=0.75 (the MAE paper's)"
    )


def check_num_classes(num_classes: Any, manifest_classes: int | None) -> None:
    """The classifier needs an output for every label in the shards (labels are ``0 .. classes - 1``)."""
    if num_classes is None:
        if manifest_classes is None:
            raise ConfigValueError(
                "objective.num_classes=None: supervised pretraining needs labeled shards and the shards have no "
                "manifest with classes; set objective.num_classes=N (labels 0 to N-1), or use objective=mae"
            )
        return
    check_count("objective.num_classes", num_classes, Count(1, "classifier outputs", "the manifest's classes"))
    if manifest_classes is not None and num_classes < manifest_classes:
        raise ConfigValueError(
            f"objective.num_classes={num_classes} is out of range: the shards' manifest has {manifest_classes} "
            f"classes (labels 0 to {manifest_classes - 1}), so it must be >= {manifest_classes}; "
            f"set objective.num_classes=null to take the manifest's {manifest_classes}"
        )


def check_global_batch(config: Mapping[str, Any], total: int) -> None:
    """One optimizer step must not need more images than the shards hold, or it would repeat some of them."""
    data, trainer = config["data"], config["trainer"]
    processes = int(trainer["num_nodes"]) * devices_per_node(trainer)
    accumulate = accumulation(trainer, data["batch_size"])
    global_batch = data["batch_size"] * processes * accumulate
    if global_batch <= total:
        return
    processes_named = f"{processes} process{'es' if processes > 1 else ''}"
    layout = f"{data['batch_size']} per device x {processes_named} x {accumulate} accumulation"
    key, most = "data.batch_size", total // (processes * accumulate)
    if trainer["global_batch_size"] is not None:
        key, most = "trainer.global_batch_size", total
    fix = f"set {key} to at most {most}" if most else "train on more images, or on fewer processes"
    raise ConfigValueError(
        f"{key}={setting(config, key)} is too large for these shards: one optimizer step takes {global_batch} "
        f"images ({layout}) and the shards' manifest holds {total}, so images would repeat within a step; {fix}"
    )
