"""Bundled sample corpora of every source kind (regenerate with ``python -m data_pipelines.samples.make_samples``)."""
