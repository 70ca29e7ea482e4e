"""
txtai-muvera: ColBERT-style late-interaction retrieval for txtai at single-vector cost.

Importing the package registers it with txtai, so `Embeddings(sparse=<late-interaction checkpoint>)` builds a MUVERA index
with exact MaxSim re-ranking. `unregister()` undoes it. The package imports txtai only when one of its txtai classes is used:
`txtai_muvera.core` (encoder, MUVERA, MaxSim, token store, FDE indexes) never imports it.
"""

from .core.lazy import exports

from .glue.registry import isregistered, register, unregister

__version__ = "0.4.0"

# Public names and the module that defines each, imported on first use
EXPORTS = {
    "ColBERT": "core.models.colbert",
    "FDEIndex": "core.ann",
    "Muvera": "core.muvera",
    "TokenStore": "core.store",
    "islateinteraction": "core.models.checkpoint",
    "maxsim": "core.maxsim",
    "maxsim_flat": "core.maxsim",
    "maxsim_padded": "core.maxsim",
    "rerank": "core.maxsim",
    "topk": "core.maxsim",
    "SearchOptions": "core.options",
    "MuveraScoring": "glue.scoring",
    "Reranker": "glue.pipeline",
    "LateVectors": "glue.legacy",
    "MuveraIndex": "glue.legacy",
    "durable": "glue",
    "transaction": "glue",
}


__getattr__, __dir__ = exports(__name__, EXPORTS)


register()
