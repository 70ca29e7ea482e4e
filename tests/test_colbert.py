"""
ColBERT encoder tests
"""

import json
import os
import shutil
import string
import time

import numpy as np
import pytest
import torch

from safetensors.numpy import load_file
from transformers import AutoModel, AutoTokenizer

from checkpoints import build_pylate_checkpoint, build_stanford_checkpoint

from txtai_muvera.core.models import ColBERT, islateinteraction
from txtai_muvera.core.models.checkpoint import CheckpointError

TEXTS = [
    "the quick brown fox jumps over the lazy dog.",
    "what is late interaction retrieval?",
    "",
    "   hello,   world!!!   ",
    "Numbers 12345 and symbols like $100 or 50% matter, e.g. in finance.",
    "a",
    " ".join(["search index token model"] * 30),
    "Über naïve café — unicode",
]


def reference(path, texts, query, layout, query_length=32, document_length=64, expansion=True, attend=False, skiplist=True, dense=1):
    """
    Plain-loop twin of the encoder, written from PyLate's spec: one text at a time, no batching.
    """

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    vocab = tokenizer.get_vocab()
    if layout == "stanford":
        heads = [load_file(os.path.join(path, "model.safetensors"))["linear.weight"]]
    else:
        heads = [load_file(os.path.join(path, f"{x + 1}_Dense", "model.safetensors"))["linear.weight"] for x in range(dense)]

    skip = {vocab[x] for x in string.punctuation if x in vocab} if skiplist else set()
    length = query_length if query else document_length
    prefix = vocab["[unused0]"] if query else vocab["[unused1]"]

    results = []
    for text in texts:
        content = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text.strip()))[: length - 3]
        ids = [vocab["[CLS]"], prefix] + content + [vocab["[SEP]"]]
        mask = [1] * len(ids)
        if query and expansion:
            ids += [vocab["[MASK]"]] * (length - len(ids))
            mask += [1 if attend else 0] * (length - len(mask))

        with torch.no_grad():
            output = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask]))[0][0].numpy()

        for weight in heads:
            output = output @ weight.T

        rows = []
        for x, uid in enumerate(ids):
            if query or (mask[x] and uid not in skip):
                rows.append(output[x] / np.linalg.norm(output[x]))

        results.append(np.array(rows, dtype=np.float32))

    return results


def check(actual, expected, tolerance=1e-5):
    """
    Checks two lists of token matrices are equal within tolerance, row counts included.
    """

    assert len(actual) == len(expected)
    for x, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == np.float32, x
        assert a.shape == e.shape, (x, a.shape, e.shape)
        assert np.abs(a - e).max(initial=0) <= tolerance, (x, np.abs(a - e).max())


def test_pylate_parity(pylate_mini):
    """
    Reproduces every matrix PyLate wrote to the pylate-mini fixture, at several batch sizes.
    """

    expected = load_file(str(pylate_mini.parent / "reference.safetensors"))
    with open(pylate_mini.parent / "reference.json", encoding="utf-8") as f:
        texts = json.load(f)

    model = ColBERT(str(pylate_mini), device="cpu")
    assert model.dim == 128
    for category, key, data in (("query", "query", texts["queries"]), ("data", "document", texts["documents"])):
        for batch in (1, 3, 32):
            check(model.encode(data, category, batch=batch), [expected[f"{key}.{x}"] for x in range(len(data))], tolerance=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"expansion": False},
        {"attend": True},
        {"skiplist": False},
        {"dense": 2},
        {"query_length": 8, "document_length": 12},
    ],
)
def test_loop_twin_pylate(tmp_path, options):
    """
    Batched encoding equals the one-text-at-a-time twin for PyLate checkpoints built with various settings.
    """

    options = {"query_length": 32, "document_length": 64, "expansion": True, "attend": False, "skiplist": True, "dense": 1, **options}
    path = build_pylate_checkpoint(
        tmp_path / "model",
        query_length=options["query_length"],
        document_length=options["document_length"],
        expansion=options["expansion"],
        attend=options["attend"],
        skiplist=options["skiplist"],
        dense_heads=options["dense"],
    )

    model = ColBERT(path, device="cpu", batch=3)
    for query in (True, False):
        expected = reference(path, TEXTS, query, "pylate", **options)
        check(model.encode(TEXTS, "query" if query else "data"), expected)


def test_loop_twin_stanford(stanford_checkpoint):
    """
    Stanford layout: linear head read from the main weights, settings from artifact.metadata.
    """

    model = ColBERT(stanford_checkpoint, device="cpu", batch=2)
    assert model.settings["layout"] == "stanford"
    assert model.settings["query_prefix"] == "[unused0]" and model.settings["document_prefix"] == "[unused1]"
    assert model.dim == 16

    for query in (True, False):
        expected = reference(stanford_checkpoint, TEXTS, query, "stanford")
        check(model.encode(TEXTS, "query" if query else "data"), expected)


def test_no_head(tmp_path):
    """
    A checkpoint without a projection head returns the backbone's normalised token outputs.
    """

    path = build_pylate_checkpoint(tmp_path / "model", head=False)
    model = ColBERT(path, device="cpu")
    assert model.dim == 32

    expected = reference(path, TEXTS, False, "pylate", dense=0)
    check(model.encode(TEXTS), expected)


def test_batch_independence(pylate_checkpoint):
    """
    Results do not depend on batch size or on the other texts in the batch.
    """

    model = ColBERT(pylate_checkpoint, device="cpu")
    for category in ("query", "data"):
        alone = [model.encode([text], category)[0] for text in TEXTS]
        for batch in (1, 2, 5, 64):
            check(model.encode(TEXTS, category, batch=batch), alone)
            check(model.encode(TEXTS[::-1], category, batch=batch), alone[::-1])


@pytest.mark.parametrize("layout", ["pylate", "stanford", "mini"])
def test_txtai_compatible(pylate_checkpoint, stanford_checkpoint, pylate_mini, layout):
    """
    compatible=True equals txtai's own LatePooling on the same single-head checkpoint, live.
    """

    # pylint: disable=C0415
    from txtai.models import PoolingFactory

    path = str({"pylate": pylate_checkpoint, "stanford": stanford_checkpoint, "mini": pylate_mini}[layout])
    model = ColBERT(path, device="cpu", compatible=True, batch=3)
    assert model.settings["compatible"] and not model.settings["do_query_expansion"] and model.settings["skiplist_words"] == []

    pooling = PoolingFactory.create({"path": path, "method": "latepooling", "device": -1, "modelargs": {"muvera": None}})
    texts = TEXTS + ["[unused0] literal prefix"]
    for category in ("query", "data"):
        ours = model.encode(texts, category)
        theirs = pooling.encode(texts, batch=4, category=category)
        for x, (a, b) in enumerate(zip(ours, theirs)):
            # txtai pads with zero rows to the longest text
            assert not b[a.shape[0] :].any(), x
            assert np.abs(a - b[: a.shape[0]]).max() <= 1e-5, x


def test_overrides(pylate_checkpoint):
    """
    Settings are read from the checkpoint and overridable by keyword.
    """

    model = ColBERT(pylate_checkpoint, device="cpu")
    assert model.settings["query_length"] == 32 and model.settings["document_length"] == 64
    json.dumps(model.settings)

    model = ColBERT(pylate_checkpoint, device="cpu", query_length=10, do_query_expansion=False, document_prefix="", skiplist_words=[])
    assert {x.shape[0] for x in model.encode(["a b c d e f g h i j k l"], "query")} == {10}
    assert model.encode(["a b"], "query")[0].shape[0] == 5

    # No document prefix, no skiplist: [CLS] a , b [SEP]
    assert model.encode(["a, b"])[0].shape[0] == 5
    assert model.settings["document_prefix"] == "" and model.settings["skiplist_words"] == []


def test_truncation(pylate_checkpoint):
    """
    Documents cut at the document length are counted; rows never exceed the length.
    """

    model = ColBERT(pylate_checkpoint, device="cpu", skiplist_words=[])
    texts = ["a " * 200, "short text", "b " * 61, "c " * 62]
    outputs = model.encode(texts)
    assert model.truncated == 2
    assert [x.shape[0] for x in outputs] == [64, 5, 64, 64]

    model.encode(["short"])
    assert model.truncated == 0


def test_bad_input(pylate_checkpoint):
    """
    Bad input raises errors naming the bad value.
    """

    model = ColBERT(pylate_checkpoint, device="cpu")
    assert model.encode([]) == []

    with pytest.raises(TypeError, match=r"texts\[1\]"):
        model.encode(["ok", None])
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        model.encode(["ok", "fine", 3])
    with pytest.raises(TypeError):
        model.encode("a string")
    with pytest.raises(ValueError, match="category"):
        model.encode(["ok"], "passage")

    # Empty strings: [CLS] prefix [SEP], queries expanded to the query length
    assert model.encode([""])[0].shape == (3, 16)
    assert model.encode([""], "query")[0].shape == (32, 16)

    with pytest.raises(ValueError, match="query_lenght.*query_length"):
        ColBERT(pylate_checkpoint, query_lenght=5)
    with pytest.raises(ValueError, match="query_length"):
        ColBERT(pylate_checkpoint, query_length="5")
    with pytest.raises(ValueError, match="query_prefix"):
        ColBERT(pylate_checkpoint, query_prefix="[NOT-A-TOKEN]")
    with pytest.raises(ValueError, match="batch"):
        ColBERT(pylate_checkpoint, batch=0)


def test_missing_checkpoint(tmp_path, pylate_checkpoint):
    """
    Missing or incomplete checkpoints name the path and the expected files.
    """

    with pytest.raises(CheckpointError, match="not found"):
        ColBERT(str(tmp_path / "missing"))

    incomplete = tmp_path / "incomplete"
    shutil.copytree(pylate_checkpoint, incomplete)
    for name in ("tokenizer.json", "vocab.txt", "model.safetensors"):
        os.remove(incomplete / name)

    with pytest.raises(CheckpointError) as error:
        ColBERT(str(incomplete))

    assert str(incomplete) in str(error.value) and "model.safetensors" in str(error.value) and "tokenizer.json" in str(error.value)

    os.remove(incomplete / "config.json")
    with pytest.raises(CheckpointError, match="config.json"):
        ColBERT(str(incomplete))


def test_hub_offline(monkeypatch):
    """
    An unreachable Hub id fails fast and suggests a local folder.
    """

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(CheckpointError, match="local folder"):
        ColBERT("nonexistent-owner/nonexistent-colbert-model")
    with pytest.raises(CheckpointError, match="local folder"):
        islateinteraction("nonexistent-owner/nonexistent-colbert-model")

    assert time.time() - start < 15


def test_islateinteraction(tmp_path, pylate_checkpoint, stanford_checkpoint, pylate_mini):
    """
    Late-interaction detection follows txtai's PoolingFactory rule.
    """

    # pylint: disable=C0415
    from txtai.models import PoolingFactory

    plain = tmp_path / "plain"
    shutil.copytree(pylate_checkpoint, plain)
    shutil.rmtree(plain / "1_Dense")
    os.remove(plain / "modules.json")

    pooled = tmp_path / "pooled"
    shutil.copytree(pylate_checkpoint, pooled)
    os.makedirs(pooled / "1_Pooling")
    with open(pooled / "1_Pooling" / "config.json", "w", encoding="utf-8") as f:
        json.dump({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}, f)

    for path, expected in ((pylate_checkpoint, True), (stanford_checkpoint, True), (pylate_mini, True), (plain, False), (pooled, False)):
        assert islateinteraction(str(path)) == expected, path
        assert (PoolingFactory.method(str(path)) == "latepooling") == expected, path

    assert not islateinteraction(str(tmp_path / "missing"))


def test_fingerprint(tmp_path, pylate_checkpoint):
    """
    The fingerprint is stable for a checkpoint and changes with its weights.
    """

    first = ColBERT(pylate_checkpoint, device="cpu")
    assert first.fingerprint == ColBERT(pylate_checkpoint, device="cpu").fingerprint
    assert first.path == str(pylate_checkpoint)

    other = build_pylate_checkpoint(tmp_path / "other", seed=7)
    assert ColBERT(other, device="cpu").fingerprint != first.fingerprint


def test_stanford_settings(tmp_path):
    """
    Stanford settings come from artifact.metadata and keyword overrides win.
    """

    path = build_stanford_checkpoint(tmp_path / "model", query_length=12, document_length=20, attend=True)
    model = ColBERT(path, device="cpu")
    assert model.settings["query_length"] == 12 and model.settings["document_length"] == 20
    assert model.settings["attend_to_expansion_tokens"]
    assert model.encode(["x " * 100], "query")[0].shape == (12, 16)
    assert model.truncated == 1

    model = ColBERT(path, device="cpu", query_length=6)
    assert model.encode(["x"], "query")[0].shape == (6, 16)
