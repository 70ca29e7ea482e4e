"""
txtai-muvera: ColBERT-style late-interaction retrieval for txtai at single-vector cost.

Importing the package registers it with txtai, so `Embeddings(sparse=<late-interaction checkpoint>)` builds a MUVERA index
with exact MaxSim re-ranking. `unregister()` undoes it.
"""

from . import durable
from .ann import FDEIndex
from .index import MuveraIndex
from .maxsim import maxsim, maxsim_flat, maxsim_padded, rerank, topk
from .models import ColBERT, islateinteraction
from .muvera import Muvera
from .pipeline import Reranker
from .registry import isregistered, register, unregister
from .store import TokenStore
from .vectors import LateVectors

__version__ = "0.1.0"

register()
