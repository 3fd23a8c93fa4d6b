"""The engine every app uses: the trainer factory and run plan, the fit lifecycle, checkpoint files and resume,
backbone IO and its metadata contract, optimizers and schedules, the training-module base, the classifier module
and its loss, and SLURM requeue. It knows no objective and no app (docs/architecture.md)."""
