"""Offline pipeline: corpora, datasets, training and evaluation."""
