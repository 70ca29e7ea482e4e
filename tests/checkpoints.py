"""
Checkpoint builders for tests: tiny random late-interaction checkpoints in the PyLate and Stanford layouts
"""

import json
import os
import string

import torch
import transformers

from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertTokenizer

# Builders run often in tests: keep their output quiet
transformers.logging.disable_progress_bar()

# Common English words for the tiny WordPiece vocabulary
WORDS = """
the of and to in is was for on that with as by at from it his an were are which be this has or had not but first one their
its new after who they have her she two been other when there all during into school time may years more most only over city
some world would where later up such used many can state about national out known university united then made age will
retrieval query queries document documents search index token tokens model models late interaction vector vectors score scores
encode encodes encoding embeddings maximum inner product single multi fixed dimensional reduce reduces text data quick brown fox
jumps lazy dog what how do i my reset password short long test unicode over under very good bad big small number numbers
symbols like matter finance vaccine efficacy adults covid three four five six seven eight nine ten hello world cat house
water fire earth air light dark day night year week month people man woman child work play run walk read write book page
word sentence question answer true false yes no red green blue black white high low left right old young best better
""".split()


def vocabulary():
    """
    Builds a tiny WordPiece vocabulary.

    Returns:
        list of tokens
    """

    tokens = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(string.punctuation) + list(string.ascii_lowercase) + list(string.digits)
    tokens += [f"##{x}" for x in string.ascii_lowercase + string.digits]
    tokens += ["##s", "##ed", "##ing", "##ly", "##er"]

    # Keep order stable and entries unique
    seen, result = set(), []
    for token in tokens + WORDS:
        if token not in seen:
            seen.add(token)
            result.append(token)

    return result


def tokenizer(path, pad="[PAD]"):
    """
    Writes a tiny BERT WordPiece tokenizer to path.

    Args:
        path: output folder
        pad: padding token

    Returns:
        tokenizer
    """

    os.makedirs(path, exist_ok=True)
    vocab = os.path.join(path, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary()) + "\n")

    tokens = vocabulary()
    if int(transformers.__version__.split(".")[0]) >= 5:
        tok = BertTokenizer(vocab={token: x for x, token in enumerate(tokens)}, do_lower_case=True, pad_token=pad, model_max_length=512)
    else:
        # transformers 4 (the PyLate parity venv) reads the vocabulary file
        tok = transformers.BertTokenizerFast(vocab_file=vocab, do_lower_case=True, pad_token=pad, model_max_length=512)
    tok.save_pretrained(path)
    return tok


def backbone(hidden, layers, heads, seed, architecture="BertModel"):
    """
    Creates a tiny random BERT model.

    Args:
        hidden: hidden size
        layers: number of layers
        heads: number of attention heads
        seed: random seed
        architecture: architecture name written to config.json

    Returns:
        BertModel
    """

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocabulary()),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        architectures=[architecture],
    )
    model = BertModel(config)
    model.eval()
    return model


def build_pylate_checkpoint(
    path,
    hidden=32,
    dim=16,
    layers=1,
    heads=2,
    query_length=32,
    document_length=64,
    expansion=True,
    skiplist=True,
    dense_heads=1,
    head=True,
    seed=0,
    attend=False,
    query_prefix="[unused0]",
    document_prefix="[unused1]",
):
    """
    Builds a tiny random checkpoint in the PyLate (sentence-transformers) layout.

    Args:
        path: output folder
        hidden: backbone hidden size
        dim: output token dimension of the dense heads
        layers: number of transformer layers
        heads: number of attention heads
        query_length: query length, counting special and prefix tokens
        document_length: document length, counting special and prefix tokens
        expansion: do_query_expansion setting
        skiplist: if True, ASCII punctuation is skipped in documents, otherwise nothing is
        dense_heads: number of chained *_Dense heads
        head: if False, no dense head is written
        seed: random seed
        attend: attend_to_expansion_tokens setting
        query_prefix: query prefix token
        document_prefix: document prefix token

    Returns:
        path
    """

    path = str(path)
    model = backbone(hidden, layers, heads, seed)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer(path, pad="[MASK]")

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    if head:
        generator = torch.Generator().manual_seed(seed + 1)
        size = hidden
        for x in range(dense_heads):
            name = f"{x + 1}_Dense"
            os.makedirs(os.path.join(path, name), exist_ok=True)
            weight = torch.randn(dim, size, generator=generator) / size**0.5
            save_file({"linear.weight": weight.contiguous()}, os.path.join(path, name, "model.safetensors"))
            config = {"in_features": size, "out_features": dim, "bias": False, "activation_function": "torch.nn.modules.linear.Identity"}
            with open(os.path.join(path, name, "config.json"), "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2)

            modules.append({"idx": x + 1, "name": str(x + 1), "path": name, "type": "pylate.models.Dense.Dense"})
            size = dim

    with open(os.path.join(path, "modules.json"), "w", encoding="utf-8") as f:
        json.dump(modules, f, indent=2)

    with open(os.path.join(path, "sentence_bert_config.json"), "w", encoding="utf-8") as f:
        json.dump({"max_seq_length": document_length - 1, "do_lower_case": False}, f, indent=2)

    config = {
        "similarity_fn_name": "MaxSim",
        "query_prefix": query_prefix,
        "document_prefix": document_prefix,
        "query_length": query_length,
        "document_length": document_length,
        "attend_to_expansion_tokens": attend,
        "skiplist_words": list(string.punctuation) if skiplist else [],
        "do_query_expansion": expansion,
    }
    with open(os.path.join(path, "config_sentence_transformers.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)

    return path


def build_stanford_checkpoint(path, hidden=32, dim=16, layers=1, heads=2, query_length=32, document_length=64, seed=0, attend=False):
    """
    Builds a tiny random checkpoint in the Stanford ColBERT layout: HF_ColBERT architecture, weights keyed bert.*
    plus linear.weight (dim x hidden) and an artifact.metadata settings file.

    Args:
        path: output folder
        hidden: backbone hidden size
        dim: output token dimension
        layers: number of transformer layers
        heads: number of attention heads
        query_length: query_maxlen
        document_length: doc_maxlen
        seed: random seed
        attend: attend_to_mask_tokens

    Returns:
        path
    """

    path = str(path)
    os.makedirs(path, exist_ok=True)
    model = backbone(hidden, layers, heads, seed, architecture="HF_ColBERT")
    model.config.save_pretrained(path)

    generator = torch.Generator().manual_seed(seed + 1)
    weights = {f"bert.{key}": value.contiguous() for key, value in model.state_dict().items()}
    weights["linear.weight"] = torch.randn(dim, hidden, generator=generator) / hidden**0.5
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    tokenizer(path)

    metadata = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_token": "[Q]",
        "doc_token": "[D]",
        "ncells": None,
        "centroid_score_threshold": None,
        "ndocs": None,
        "index_path": None,
        "nbits": 2,
        "kmeans_niters": 4,
        "similarity": "cosine",
        "bsize": 32,
        "accumsteps": 1,
        "lr": 3e-06,
        "maxsteps": 500000,
        "nway": 2,
        "use_ib_negatives": False,
        "reranker": False,
        "distillation_alpha": 1.0,
        "ignore_scores": False,
        "query_maxlen": query_length,
        "attend_to_mask_tokens": attend,
        "interaction": "colbert",
        "dim": dim,
        "doc_maxlen": document_length,
        "mask_punctuation": True,
        "checkpoint": "colbert-ir/colbertv2.0",
        "triples": None,
        "collection": None,
        "queries": None,
        "index_name": None,
        "overwrite": False,
        "root": "experiments",
        "experiment": "default",
        "index_root": None,
        "name": "default",
        "rank": 0,
        "nranks": 1,
        "amp": True,
        "gpus": 0,
    }
    with open(os.path.join(path, "artifact.metadata"), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=4)

    return path
