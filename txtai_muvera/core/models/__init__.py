"""
Models imports: names are imported on first use, so checking a checkpoint folder does not load torch
"""

import importlib

# Public names and the module that defines each
EXPORTS = {"Checkpoint": "checkpoint", "CheckpointError": "checkpoint", "islateinteraction": "checkpoint", "ColBERT": "colbert"}


def __getattr__(name):
    if name in EXPORTS:
        return getattr(importlib.import_module(f".{EXPORTS[name]}", __name__), name)

    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *EXPORTS])
