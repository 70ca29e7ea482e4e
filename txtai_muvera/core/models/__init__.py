"""
Models imports: names are imported on first use, so checking a checkpoint folder does not load torch
"""

from ..lazy import exports

# Public names and the module that defines each
EXPORTS = {"Checkpoint": "checkpoint", "CheckpointError": "checkpoint", "islateinteraction": "checkpoint", "ColBERT": "colbert"}


__getattr__, __dir__ = exports(__name__, EXPORTS)
