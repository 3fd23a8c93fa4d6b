"""Pretraining objectives (``objective=`` in conf/), one module each, on the shared engine.

- ``objective``: the :class:`~pretrain.objectives.objective.Objective` interface (network, Lightning module, stream
  views, FLOPs and tokens, W&B panels, metadata, checkpoint state) and the registry, ``objective_named``.
- ``mae``: masked-autoencoder pretraining (``MaskedAutoencoding``, ``MAEModule``, ``ReconstructionLogger``).
- ``supervised``: supervised pretraining (``Supervised``, on the engine's ``ClassifierModule``).
- ``build``: the run's Lightning module, metadata and training stream from the config and the looked-up objective.
"""
