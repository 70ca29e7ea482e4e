"""
txtai-muvera: ColBERT-style late-interaction retrieval for txtai at single-vector cost.

Importing the package registers it with txtai, so `Embeddings(sparse=<late-interaction checkpoint>)` builds a MUVERA index
with exact MaxSim re-ranking. `unregister()` undoes it.
"""

from .core import ColBERT, FDEIndex, Muvera, TokenStore, islateinteraction, maxsim, maxsim_flat, maxsim_padded, rerank, topk
from .glue import durable
from .glue.index import MuveraIndex
from .glue.pipeline import Reranker
from .glue.registry import isregistered, register, unregister
from .glue.vectors import LateVectors

__version__ = "0.1.0"

register()
