"""Pure-torch models: the ViT backbone, the MAE around it, and weight adaptation from other layouts."""

from pretrain.models.mae import MAEOutput, MaskedAutoencoder, patchify, random_masking, unpatchify
from pretrain.models.vit import PRESETS, VisionTransformer, create_vit, preset_options

__all__ = [
    "MAEOutput",
    "MaskedAutoencoder",
    "PRESETS",
    "VisionTransformer",
    "create_vit",
    "patchify",
    "preset_options",
    "random_masking",
    "unpatchify",
]
