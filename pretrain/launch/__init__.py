"""Launching on clusters: SLURM batch scripts rendered from the Hydra config (``python -m pretrain.launch.slurm``
for training, ``python -m pretrain.launch.pipeline`` for the data pipeline as chained job arrays)."""
