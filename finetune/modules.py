"""The three downstream modes as Lightning modules, and the registry that builds them from a ``mode`` config.

- ``linear``: frozen backbone -> BatchNorm(affine=False) -> Linear, trained with LARS or SGD (MAE's probe).
- ``finetune``: the whole backbone plus a new head, trained by the supervised pretraining module with layer-wise
  lr decay (so mixup/cutmix, label smoothing, non-finite guarding and per-step seeding are the pretraining ones).
- ``knn``: no training; cosine k-NN over the training images' features, weighted votes.

Every mode reports ``test/top1`` (and ``test/top5`` when the task has more than 5 classes) in percent, exact over
all ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from pretrain.models.vit import VisionTransformer
from pretrain.modules import SupervisedModule
from pretrain.optim import OptimConfig, build_optimizer, scaled_lr, warmup_cosine

Batch = dict[str, Any]


class TopKAccuracy(nn.Module):
    """Top-1 and (more than 5 classes) top-5 accuracy in percent, synchronized over ranks when computed."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        ks = (1, 5) if num_classes > 5 else (1,)
        self.metrics = nn.ModuleDict(
            {f"top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro") for k in ks}
        )

    def update(self, scores: Tensor, labels: Tensor) -> None:
        """``scores: [N, C]`` (logits or votes), ``labels: [N]``."""
        for metric in self.metrics.values():
            metric.update(scores, labels)

    def compute_and_reset(self) -> dict[str, Tensor]:
        values = {f"test/{name}": 100 * metric.compute() for name, metric in self.metrics.items()}
        for metric in self.metrics.values():
            metric.reset()
        return values


class ClassifierTest:
    """Test loop of the modes with a classifier head: accuracy of ``self(images)`` on the test images."""

    accuracy: TopKAccuracy

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.accuracy.update(self(batch["image"]), batch["label"])

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.accuracy.compute_and_reset())


def pooled_features(backbone: VisionTransformer, images: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, D]``: the backbone's pooled tokens (CLS or patch average), without gradients."""
    with torch.no_grad():
        return backbone.forward_head(backbone.forward_features(images), pre_logits=True)


def frozen(backbone: VisionTransformer, pool: str) -> VisionTransformer:
    """The backbone without head, pooling ``pool``, in eval mode and excluded from optimization."""
    backbone.reset_classifier(0, global_pool=pool)
    return backbone.requires_grad_(False).eval()


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017), as MAE's linear probe uses it.

    The update of every matrix is rescaled to ``trust_coefficient * ||w|| / ||g||`` of its gradient; biases and
    norms (1-d parameters) take plain momentum SGD.
    """

    def __init__(
        self, params: Iterable[Tensor], lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(param), torch.norm(update)
                    trust = group["trust_coefficient"] * param_norm / update_norm
                    update = update.mul(torch.where((param_norm > 0) & (update_norm > 0), trust, 1.0))
                momentum = self.state[param].setdefault("momentum", torch.zeros_like(param))
                momentum.mul_(group["momentum"]).add_(update)
                param.add_(momentum, alpha=-group["lr"])
        return loss


PROBE_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "lars": LARS,
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay),
}


@dataclass(frozen=True)
class RunContext:
    """What a mode needs from the run besides its own config: classes, schedule, provenance."""

    num_classes: int
    total_steps: int
    warmup_steps: int
    global_batch: int
    seed: int
    meta: Mapping[str, Any] = field(default_factory=dict)
    max_bad_steps: int = 5


class LinearProbeModule(ClassifierTest, L.LightningModule):
    """Frozen backbone -> BatchNorm1d(affine=False) -> Linear; only the head trains."""

    def __init__(
        self, backbone: VisionTransformer, num_classes: int, pool: str, optimizer: str, lr: float,
        weight_decay: float, total_steps: int, warmup_steps: int,
    ) -> None:
        super().__init__()
        if optimizer not in PROBE_OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(sorted(PROBE_OPTIMIZERS))}")
        self.model = frozen(backbone, pool)
        linear = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(nn.BatchNorm1d(backbone.embed_dim, affine=False, eps=1e-6), linear)
        self.accuracy = TopKAccuracy(num_classes)
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def train(self, mode: bool = True) -> LinearProbeModule:
        """The backbone stays in eval mode (no drop path) while the head trains."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.head(pooled_features(self.model, images))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        features = batch["features"] if "features" in batch else pooled_features(self.model, batch["image"])
        loss = F.cross_entropy(self.head(features), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["label"].shape[0])
        return loss

    def predict_step(self, batch: Batch, batch_idx: int) -> Batch:
        """Frozen features of a batch, kept on the CPU (``cache_features``)."""
        return {"features": pooled_features(self.model, batch["image"]).float().cpu(), "label": batch["label"].cpu()}

    def configure_optimizers(self) -> dict[str, Any]:
        build = PROBE_OPTIMIZERS[self.optimizer_name]
        optimizer = build(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(self.warmup_steps, self.total_steps, 0.0))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class FinetuneModule(ClassifierTest, SupervisedModule):
    """The supervised pretraining module on a backbone with a new head, with layer-wise lr decay."""

    def __init__(
        self, backbone: VisionTransformer, num_classes: int, pool: str, meta: Mapping[str, Any], **kwargs: Any
    ) -> None:
        backbone.reset_classifier(num_classes, global_pool=pool)
        nn.init.trunc_normal_(backbone.head.weight, std=2e-5)  # MAE: a near-zero head leaves the features intact
        # Checkpoints describe the fine-tuned backbone (pooling, resolution), so the weight loader rebuilds it.
        options = {**meta.get("options", {}), "img_size": backbone.patch_embed.img_size, "global_pool": pool}
        super().__init__(backbone, meta={**meta, "options": options}, **kwargs)
        self.accuracy = TopKAccuracy(num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = build_optimizer(
            self.model, self.optim_config, self.global_batch, self.total_steps, num_blocks=len(self.model.blocks)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def knn_scores(
    queries: Tensor, bank: Tensor, bank_labels: Tensor, k: int, temperature: float, num_classes: int
) -> Tensor:
    """Weighted k-NN votes. ``queries: [Q, D]``, ``bank: [N, D]`` (both L2-normalized), ``bank_labels: [N]``
    -> ``[Q, num_classes]``: the k most similar bank entries vote for their label with ``exp(cos / temperature)``."""
    similarity, index = (queries @ bank.T).topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device, dtype=queries.dtype)
    return votes.scatter_add_(1, bank_labels[index], (similarity / temperature).exp())


class KnnModule(L.LightningModule):
    """Test dataloader 0 fills the bank with training features, dataloader 1 holds the test images."""

    QUERY_CHUNK = 1024

    def __init__(self, backbone: VisionTransformer, num_classes: int, pool: str, k: int, temperature: float) -> None:
        super().__init__()
        self.model = frozen(backbone, pool)
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        self.accuracy = TopKAccuracy(num_classes)
        self.stored: dict[int, tuple[list[Tensor], list[Tensor]]] = {}

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(pooled_features(self.model, images).float(), dim=-1)

    def on_test_epoch_start(self) -> None:
        self.stored = {0: ([], []), 1: ([], [])}

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        features, labels = self.stored[dataloader_idx]
        features.append(self(batch["image"]))
        labels.append(batch["label"])

    def on_test_epoch_end(self) -> None:
        (bank, bank_labels), (queries, labels) = (
            (torch.cat(features), torch.cat(labels)) for features, labels in self.stored.values()
        )
        bank, bank_labels = gather_rows(self, bank), gather_rows(self, bank_labels)
        for start in range(0, queries.shape[0], self.QUERY_CHUNK):
            chunk = slice(start, start + self.QUERY_CHUNK)
            scores = knn_scores(queries[chunk], bank, bank_labels, self.k, self.temperature, self.num_classes)
            self.accuracy.update(scores, labels[chunk])
        self.stored = {}
        self.log_dict(self.accuracy.compute_and_reset())


def gather_rows(module: L.LightningModule, rows: Tensor) -> Tensor:
    """Every rank's ``rows`` concatenated (ranks may hold different counts): pad to the longest, gather, trim."""
    if module.trainer.world_size == 1:
        return rows
    counts = module.all_gather(torch.tensor(rows.shape[0], device=rows.device)).view(-1)
    padded = rows.new_zeros((int(counts.max()), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = module.all_gather(padded)
    return torch.cat([part[:count] for part, count in zip(gathered, counts.tolist())])


@dataclass(frozen=True)
class Mode:
    """How a mode is built, whether it trains, and whether it also reads the training images at test time."""

    build: Callable[[VisionTransformer, Mapping[str, Any], RunContext], L.LightningModule]
    trains: bool
    tests_on_training_images: bool = False
    callbacks: Callable[[Mapping[str, Any]], list[Callback]] = lambda mode: []


def build_linear(backbone: VisionTransformer, mode: Mapping[str, Any], run: RunContext) -> LinearProbeModule:
    lr = scaled_lr(OptimConfig(base_lr=mode["base_lr"]), run.global_batch)
    return LinearProbeModule(
        backbone, run.num_classes, mode["pool"], mode["optimizer"], lr, mode["weight_decay"], run.total_steps,
        run.warmup_steps,
    )


def build_finetune(backbone: VisionTransformer, mode: Mapping[str, Any], run: RunContext) -> FinetuneModule:
    return FinetuneModule(
        backbone,
        run.num_classes,
        mode["pool"],
        optim=OptimConfig(**mode["optim"], warmup_steps=run.warmup_steps),
        total_steps=run.total_steps,
        global_batch=run.global_batch,
        meta=run.meta,
        seed=run.seed,
        max_bad_steps=run.max_bad_steps,
        label_smoothing=mode["label_smoothing"],
        mixup_alpha=mode["mixup_alpha"],
        cutmix_alpha=mode["cutmix_alpha"],
    )


def build_knn(backbone: VisionTransformer, mode: Mapping[str, Any], run: RunContext) -> KnnModule:
    return KnnModule(backbone, run.num_classes, mode["pool"], mode["k"], mode["temperature"])


def ema_callbacks(mode: Mapping[str, Any]) -> list[Callback]:
    """Fine-tuning with ``ema_decay`` tests the moving average of the weights (copied in when training ends)."""
    return [EMAWeightAveraging(decay=mode["ema_decay"])] if mode.get("ema_decay") else []


MODES: dict[str, Mode] = {
    "linear": Mode(build_linear, trains=True),
    "finetune": Mode(build_finetune, trains=True, callbacks=ema_callbacks),
    "knn": Mode(build_knn, trains=False, tests_on_training_images=True),
}


def get_mode(name: str) -> Mode:
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; choose one of: {', '.join(sorted(MODES))}")
    return MODES[name]
