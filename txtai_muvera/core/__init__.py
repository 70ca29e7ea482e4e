"""
Core: the txtai-free layers (encoder, MUVERA, MaxSim, token store and codecs, storage engines, files). Never imports txtai.
"""

from .ann import FDEIndex
from .maxsim import maxsim, maxsim_flat, maxsim_padded, rerank, topk
from .models import ColBERT, islateinteraction
from .muvera import Muvera
from .options import SearchOptions
from .store import TokenStore
