"""Reproducible image classification: the code the DVC stages and the `imageclf` command share."""
