"""
PyLate parity check on texts beyond the fixture's

PyLate can't be installed beside txtai 9.14 (transformers pins conflict), so run this script inside a separate virtual
environment that has pylate==1.2.0 (and torch 2.13.0 installed first). txtai_muvera.core.models never imports txtai, so it
is loaded from this repository without the package's txtai registration.

    python -m venv /tmp/pylate-venv
    /tmp/pylate-venv/bin/pip install torch==2.13.0      # or make an existing torch 2.13.0 visible through a .pth file
    /tmp/pylate-venv/bin/pip install pylate==1.2.0 numpy safetensors
    /tmp/pylate-venv/bin/python benchmarks/pylate_parity.py [CHECKPOINT ...]

Default checkpoints: the pylate-tiny fixture and tiny random PyLate / Stanford checkpoints built by tests/checkpoints.py.
Prints one JSON line per checkpoint and side with the max absolute difference and whether the row counts agree.
"""

import importlib
import json
import os
import sys
import tempfile
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXTS = [
    "what is late interaction retrieval?",
    "",
    "   leading and trailing spaces   ",
    "Punctuation!!! everywhere??? (yes) [really] {truly} -- ok...",
    "Ünïcödé têxt with émojis 🙂 and CJK 漢字 and RTL שלום",
    "numbers 3.14159, 2,718 and $1,000,000 — 50% off!",
    "[unused0] [unused1] [MASK] [CLS] literal special tokens",
    "tab\tseparated\nnew lines\r\nand more",
    " ".join(["repeated words make a long document"] * 60),
    "a",
    "MUVERA fixed dimensional encodings approximate multi-vector similarity with a single vector inner product.",
]


def load():
    """
    Imports txtai_muvera.core.models without the package __init__ (which registers with txtai).

    Returns:
        ColBERT class
    """

    package = types.ModuleType("txtai_muvera")
    package.__path__ = [os.path.join(ROOT, "txtai_muvera")]
    sys.modules.setdefault("txtai_muvera", package)
    return importlib.import_module("txtai_muvera.core.models").ColBERT


def defaults(folder):
    """
    Builds the default checkpoints.

    Args:
        folder: temporary folder

    Returns:
        list of (name, path)
    """

    sys.path.insert(0, os.path.join(ROOT, "tests"))

    # pylint: disable=C0415
    from checkpoints import build_pylate_checkpoint, build_stanford_checkpoint

    return [
        ("pylate-tiny", os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "pylate-tiny", "model")),
        ("tiny-pylate", build_pylate_checkpoint(os.path.join(folder, "pylate"))),
        ("tiny-pylate-attend", build_pylate_checkpoint(os.path.join(folder, "attend"), attend=True, dense_heads=2)),
        ("tiny-stanford", build_stanford_checkpoint(os.path.join(folder, "stanford"))),
    ]


def main():
    """
    Encodes TEXTS with PyLate and with ColBERT and prints the max absolute differences.
    """

    # pylint: disable=C0415
    from pylate import models

    colbert = load()
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = [(x, x) for x in sys.argv[1:]] if len(sys.argv) > 1 else defaults(folder)
        for name, path in checkpoints:
            reference = models.ColBERT(path, device="cpu")
            ours = colbert(path, device="cpu")
            for query in (True, False):
                expected = reference.encode(TEXTS, is_query=query, convert_to_numpy=True, batch_size=4, show_progress_bar=False)
                actual = ours.encode(TEXTS, "query" if query else "data", batch=3)
                rows = all(a.shape == e.shape for a, e in zip(actual, expected))
                diff = max(float(np.abs(a - e).max(initial=0)) for a, e in zip(actual, expected) if a.shape == e.shape)
                print(
                    json.dumps({"checkpoint": name, "side": "query" if query else "document", "rows_match": rows, "max_abs_diff": diff}), flush=True
                )


if __name__ == "__main__":
    main()
