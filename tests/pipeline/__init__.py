"""Tests of the data pipeline (data_pipelines/)."""
