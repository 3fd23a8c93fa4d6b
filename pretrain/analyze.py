"""Figures of what a pretrained ViT learned, for any checkpoint (Dosovitskiy et al., 2021, Fig. 7; MAE Fig. 2).

    python pretrain/analyze.py ckpt=outputs/pretrain/<run>      # its newest checkpoint: the five figures
    python pretrain/analyze.py ckpt=outputs/pretrain/<run>/backbone.safetensors logger=wandb  # four, to W&B too
    python pretrain/analyze.py ckpt=outputs/pretrain/<run>/checkpoints/step_000100.ckpt
    python pretrain/analyze.py --help                          # every option

Writes ``run_dir/figures/``: patch-embedding filters, position-embedding similarity, mean attention distance by
depth and head (averaged over ``num_images`` images), CLS attention and attention rollout overlaid on images, and
MAE reconstructions. Reconstructions need the whole MAE, so only a Lightning ``.ckpt`` of an MAE run gives them;
for other inputs the log says why they are skipped. The numbers and the drawing live in :mod:`pretrain.analysis`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
import wandb
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from data_pipelines.demo import ensure_demo_shards
from data_pipelines.stream import StreamConfig, build_loader
from data_pipelines.transforms import TransformOptions
from pretrain import analysis
from pretrain.engine.architecture import backbone_options
from pretrain.engine.backbone_io import load_backbone
from pretrain.engine.checkpoints import CHECKPOINT_SUBDIR, find_resume_checkpoint, read_checkpoint
from pretrain.engine.config import optional_group, settings
from pretrain.engine.metadata import BackboneMeta
from pretrain.engine.trainer import build_logger
from pretrain.models.mae import MaskedAutoencoder
from pretrain.models.vit import ChannelPatchEmbed, VisionTransformer
from pretrain.objectives.build import build_model

log = logging.getLogger("analyze")

FIGURES_SUBDIR = "figures"
RUN_CONFIG = Path(".hydra") / "config.yaml"


def resolve_checkpoint(path: Path) -> Path:
    """A pretraining run directory stands for its newest complete checkpoint; any other path is used as given."""
    newest = find_resume_checkpoint(path / CHECKPOINT_SUBDIR) if path.is_dir() else None
    return newest or path


def load_mae(path: Path, meta: BackboneMeta, objective: Mapping[str, Any] | None) -> MaskedAutoencoder | str:
    """The whole MAE of a Lightning checkpoint, or the reason there is none to load.

    The decoder's options come from ``objective`` when given, else from the checkpoint's own metadata (runs of
    this version record it), else from the pretraining run's ``.hydra/config.yaml`` (beside ``checkpoints/``).
    """
    if path.suffix != ".ckpt" or not path.is_file():
        return f"{path.name} is not a Lightning .ckpt file, the only input the MAE decoder is read from"
    if meta.objective != "mae":
        return f"{path.name} comes from objective={meta.objective!r} pretraining, which has no MAE decoder"
    objective = objective or meta.objective_config
    if objective is None:
        run_configs = [directory / RUN_CONFIG for directory in (path.parent, path.parent.parent)]
        found = next((config for config in run_configs if config.is_file()), None)
        if found is None:
            return (
                f"the MAE decoder options are unknown: no {RUN_CONFIG} of the pretraining run beside {path}; "
                "pass the objective it used, e.g. +objective=mae"
            )
        objective = OmegaConf.to_container(OmegaConf.load(found).objective, resolve=True)
    mae = build_model(objective, meta.options)
    state = read_checkpoint(path)["state_dict"]
    mae.load_state_dict({key.removeprefix("model."): value for key, value in state.items()})
    return mae


def image_batches(config: Mapping[str, Any], image_size: int, mean: list[float], std: list[float]) -> list[Tensor]:
    """At least ``num_images`` normalized, centre-cropped images (fewer when the shards hold fewer), in batches."""
    data = config["data"]
    if data["make_demo"]:
        ensure_demo_shards(data["shards"], image_size)
    stream = StreamConfig(
        shards=data["shards"],
        batch_size=data["batch_size"],
        num_workers=data["num_workers"],
        transform="eval",
        augment=TransformOptions(
            image_size=image_size,
            crop_scale=None,
            crop_ratio=None,
            eval_crop_fraction=data["eval_crop_fraction"],
            randaugment=None,
            intensity_scale=None,
            bands=data["bands"],
        ),
        mean=mean,
        std=std,
        seed=config["seed"],
        shuffle_buffer=0,
        manifest=data["manifest"],
        pin_memory=data["pin_memory"],
    )
    batches, count = [], 0
    for batch in build_loader(stream):
        batches.append(batch["image"])
        count += len(batch["image"])
        if count >= config["num_images"]:
            break
    if not batches:
        raise ValueError(f"no images in data.shards={data['shards']}; point it at shards with images")
    return batches


@torch.no_grad()
def average_attention_distance(backbone: VisionTransformer, batches: list[Tensor]) -> Tensor:
    """Mean attention distance in pixels (voxels) ``[depth, heads]``, averaged over every image of ``batches``."""
    patch_embed, prefix = backbone.patch_embed, backbone.num_prefix_tokens
    total, count = torch.zeros(()), 0
    for images in batches:
        attentions = backbone.forward_attention_maps(images)
        distances = analysis.mean_attention_distance_by_layer(
            attentions, patch_embed.grid_size, patch_embed.patch_shape, prefix, tokens_per_patch(backbone)
        )
        total = total + len(images) * distances.cpu()
        count += len(images)
    return total / count


def tokens_per_patch(backbone: VisionTransformer) -> int:
    """Tokens of each patch: one, or one per channel read for channel tokens."""
    patch_embed = backbone.patch_embed
    return len(patch_embed.active_channels) if isinstance(patch_embed, ChannelPatchEmbed) else 1


def shows_rgb(backbone: VisionTransformer) -> bool:
    """Whether inputs can be drawn as pictures (2-D, 3 channels, a token per patch): the filter, attention-map and
    reconstruction figures need it; volumes and N-channel inputs get the position and distance figures."""
    patch_embed = backbone.patch_embed
    return len(patch_embed.grid_size) == 2 and patch_embed.in_chans == 3 and patch_embed.proj_in_chans == 3


@torch.no_grad()
def write_figures(
    backbone: VisionTransformer,
    mae: MaskedAutoencoder | None,
    batches: list[Tensor],
    config: Mapping[str, Any],
    mean: list[float],
    std: list[float],
    out_dir: Path,
) -> dict[str, Path]:
    """Every figure the inputs allow, keyed by name; reconstructions only when ``mae`` is given."""
    grid, prefix = backbone.patch_embed.grid_size, backbone.num_prefix_tokens
    positions = backbone.pos_embed[0, prefix:]
    figures = {
        "mean_attention_distance": analysis.plot_mean_attention_distance(
            average_attention_distance(backbone, batches),
            out_dir / "mean_attention_distance.png",
            image_size=max(backbone.patch_embed.image_shape),
            spatial_dims=len(grid),
        ),
    }
    if len(grid) == 3:
        figures["position_embedding_similarity"] = analysis.plot_position_similarity_by_axis(
            analysis.position_similarity_by_axis(positions, grid), out_dir / "position_embedding_similarity.png"
        )
    else:
        figures["position_embedding_similarity"] = analysis.plot_position_embedding_similarity(
            analysis.position_embedding_similarity(positions, grid), out_dir / "position_embedding_similarity.png"
        )
    if not shows_rgb(backbone):
        log.info("volumes or N-channel inputs: no filter, attention-map or reconstruction figures (they draw RGB)")
        return figures
    figures["patch_embedding_filters"] = analysis.plot_patch_embedding_filters(
        analysis.patch_embedding_components(backbone.patch_embed.proj.weight, config["num_components"]),
        out_dir / "patch_embedding_filters.png",
    )
    shown = batches[0][: config["num_shown"]]
    attentions = backbone.forward_attention_maps(shown)
    rollout = analysis.attention_rollout(attentions, config["head_fusion"])
    figures["attention_maps"] = analysis.plot_attention_maps(
        analysis.denormalize(shown, mean, std),
        analysis.cls_attention_maps(attentions[-1], grid, prefix),
        analysis.cls_attention_maps(rollout[:, None], grid, prefix)[:, 0],
        out_dir / "attention_maps.png",
    )
    if mae is not None:
        generator = torch.Generator().manual_seed(config["seed"])
        noise = torch.rand(len(shown), backbone.patch_embed.num_patches, generator=generator).to(shown.device)
        output = mae(shown, mask_ratio=config["mask_ratio"], noise=noise)
        panels = analysis.reconstruction_panels(
            shown, output.mask, output.pred, mae.patch_size, mean, std, mae.norm_pix_loss
        )
        figures["reconstructions"] = analysis.plot_reconstructions(panels, out_dir / "reconstructions.png")
    return figures


def analyze(config: Mapping[str, Any], run_dir: Path) -> dict[str, Path]:
    """Write the figures for ``config["ckpt"]`` to ``run_dir/figures`` (and W&B); returns them by name.

    ``model`` and ``objective`` are optional groups (``+model=...``): absent, the checkpoint's metadata says.
    """
    config = settings(config)
    path, device = resolve_checkpoint(Path(config["ckpt"])), torch.device(config["device"])
    model = optional_group(config, "model")
    options = backbone_options(model) if model else None
    backbone, meta = load_backbone(path, options, bands=config["data"]["bands"])
    image_size = config["data"]["image_size"] or backbone.patch_embed.img_size
    step = "unknown" if meta.step is None else meta.step
    log.info("analysing %s (step %s) on %dpx images", path, step, image_size)
    mae = load_mae(path, meta, optional_group(config, "objective"))
    if isinstance(mae, str):
        log.warning("skipping the MAE reconstructions figure: %s", mae)
        mae = None
    else:
        mae.to(device).eval()
    mean, std = list(meta.mean or config["data"]["mean"]), list(meta.std or config["data"]["std"])
    batches = [images.to(device) for images in image_batches(config, image_size, mean, std)]
    log.info("mean attention distance over %d images", sum(len(images) for images in batches))
    figures = write_figures(backbone.to(device).eval(), mae, batches, config, mean, std, run_dir / FIGURES_SUBDIR)
    log.info("wrote %d figures to %s", len(figures), run_dir / FIGURES_SUBDIR)
    logger = build_logger(config["logger"], run_dir, config)
    if isinstance(logger, WandbLogger):
        caption = f"{path} (step {step})"
        images = {f"analysis/{name}": wandb.Image(str(png), caption=caption) for name, png in figures.items()}
        logger.experiment.log(images)
        logger.experiment.finish()
    return figures


@hydra.main(config_path="../conf", config_name="analyze", version_base="1.3")
def main(cfg: DictConfig) -> None:
    analyze(OmegaConf.to_container(cfg, resolve=True), Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
