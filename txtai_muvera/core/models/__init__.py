"""
Models imports
"""

from .checkpoint import Checkpoint, CheckpointError, islateinteraction
from .colbert import ColBERT
