"""The downstream modes (``mode=`` in conf/): their modules and evaluations; ``finetune/protocol.py`` runs them.

- ``linear``: the selecting linear probe on frozen features (a grid of heads, chosen on validation);
- ``knn``: cosine k-NN on frozen features;
- ``finetune``: the whole backbone plus a new head, the ViT paper's transfer protocol (lr chosen on validation);
- ``finetune_mae``: the same module with MAE's ImageNet recipe (AdamW, layer decay, RandAugment, mixing, erasing);
- ``linear_mae``: MAE's linear probe as a fixed recipe (BatchNorm + linear head, LARS, augmented images).

They use the engine and the models, never a pretraining objective.
"""
