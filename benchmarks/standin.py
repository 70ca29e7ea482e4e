"""
Stand-in late-interaction checkpoint for offline quality runs: builds it (see txtai_muvera.tools.standin) and checks that this
package's ColBERT and txtai's own late-interaction pooling both load it and agree.

Usage:
    python benchmarks/standin.py [OUTPUT_DIR]     (default benchmarks/output/standin)
"""

import json
import os
import sys

import numpy as np

from txtai_muvera.tools.standin import build_standin

# Default output folder
DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output", "standin")


def verify(path):
    """
    Checks that ColBERT and txtai's PoolingFactory both load the stand-in and agree.

    Args:
        path: checkpoint folder

    Returns:
        max absolute difference
    """

    # pylint: disable=C0415
    from txtai.models import PoolingFactory
    from txtai_muvera.core.models import ColBERT, islateinteraction

    texts = ["what is late interaction retrieval?", "MUVERA reduces multi-vector retrieval to single-vector search.", "", "word " * 300]
    pooling = PoolingFactory.create({"path": path, "method": "latepooling", "device": -1, "modelargs": {"muvera": None}})
    if not islateinteraction(path) or PoolingFactory.method(path) != "latepooling":
        raise ValueError(f"{path} is not detected as a late-interaction checkpoint")

    worst = 0.0
    for compatible in (False, True):
        model = ColBERT(path, device="cpu", compatible=compatible)
        for category in ("query", "data"):
            for ours, theirs in zip(model.encode(texts, category), pooling.encode(texts, category=category)):
                if theirs[ours.shape[0] :].any():
                    raise ValueError("row counts differ from txtai")
                worst = max(worst, float(np.abs(ours - theirs[: ours.shape[0]]).max()))

    return worst


if __name__ == "__main__":
    output = build_standin(sys.argv[1] if len(sys.argv) > 1 else DEFAULT)
    print(json.dumps({"standin": output, "txtai_max_abs_diff": verify(output)}))
