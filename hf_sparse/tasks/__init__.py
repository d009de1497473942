"""Downstream tasks: data loading, preprocessing and metrics for GLUE and SQuAD."""
