"""Pretraining objectives as Lightning modules on the shared engine: MAE and supervised (``objective=`` in conf/)."""
