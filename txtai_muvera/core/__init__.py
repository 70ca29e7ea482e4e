"""
Core: the txtai-free layers (encoder, MUVERA, MaxSim, token store and codecs, storage engines, files). Never imports txtai.

Names are imported on first use, so that `import txtai_muvera` (and the command line's --help) does not load torch or faiss.
"""

from .lazy import exports

# Public names and the module that defines each. The MaxSim function `maxsim` is not among them: its module has the same name,
# which Python binds here once it is imported (use `txtai_muvera.maxsim` or `txtai_muvera.core.maxsim.maxsim`)
EXPORTS = {
    "FDEIndex": "ann",
    "maxsim_flat": "maxsim",
    "maxsim_padded": "maxsim",
    "rerank": "maxsim",
    "topk": "maxsim",
    "ColBERT": "models",
    "islateinteraction": "models.checkpoint",
    "Muvera": "muvera",
    "SearchOptions": "options",
    "TokenStore": "store",
}


__getattr__, __dir__ = exports(__name__, EXPORTS)
