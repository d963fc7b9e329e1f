"""Launching on clusters: SLURM batch scripts rendered from the Hydra config (``python -m pretrain.launch.slurm``
for training, ``python -m data_pipelines.executor.slurm`` for the data pipeline as chained job arrays)."""
