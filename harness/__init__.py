"""Reproducibility harness for language-model architecture comparisons.

Stages (one module each, imports point down): cli -> report -> aggregate/stats -> collapse
-> train -> shape -> data -> archs. collapse, stats, aggregate and report never import torch.
"""

__version__ = "0.1.0"
