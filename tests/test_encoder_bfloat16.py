"""
ColBERT's 16-bit CPU path (half=True: bfloat16 autocast) checked against the float32 PyTorch reference
"""

import json
import logging

import numpy as np
import pytest

from encoding import DOCUMENTS, QUERIES, cosines

from txtai_muvera.core.models import ColBERT
from txtai_muvera.core.models import colbert as colbertmodule

# Stated tolerance: every token's cosine similarity to the float32 reference stays at or above BFLOAT16 (measured minimum:
# 0.99998 on the test checkpoints; 0.9995 on 128 SciFact documents with the MiniLM stand-in, mean 0.99997). The nDCG cost on a
# trained model is measured by benchmarks/encoder_ndcg.py
BFLOAT16 = 0.999


@pytest.mark.parametrize("layout", ["mini", "pylate", "stanford"])
@pytest.mark.parametrize("compatible", [False, True])
def test_parity(layout, compatible, pylate_mini, pylate_checkpoint, stanford_checkpoint):
    """
    half=True on CPU runs in bfloat16 (outputs differ from float32) and keeps every token's cosine >= BFLOAT16.
    """

    path = str({"mini": pylate_mini, "pylate": pylate_checkpoint, "stanford": stanford_checkpoint}[layout])
    reference = ColBERT(path, device="cpu", compatible=compatible)
    half = ColBERT(path, device="cpu", half=True, compatible=compatible)
    assert half.autocast and not reference.autocast
    assert next(half.model.parameters()).dtype == reference.heads[0][0].dtype == half.heads[0][0].dtype

    for texts, category in ((DOCUMENTS, "data"), (QUERIES, "query")):
        expected, actual = reference.encode(texts, category), half.encode(texts, category)
        values = cosines(actual, expected)
        assert values.min() >= BFLOAT16
        assert max(float(np.abs(a - e).max()) for a, e in zip(actual, expected)) > 0


def test_pylate_reference(pylate_mini):
    """
    The bfloat16 path stays within BFLOAT16 cosine of the matrices PyLate wrote to the pylate-mini fixture.
    """

    # pylint: disable=C0415
    from safetensors.numpy import load_file

    expected = load_file(str(pylate_mini.parent / "reference.safetensors"))
    with open(pylate_mini.parent / "reference.json", encoding="utf-8") as f:
        texts = json.load(f)

    model = ColBERT(str(pylate_mini), device="cpu", half=True)
    for category, key, data in (("query", "query", texts["queries"]), ("data", "document", texts["documents"])):
        assert cosines(model.encode(data, category), [expected[f"{key}.{x}"] for x in range(len(data))]).min() >= BFLOAT16


def test_batch_independence(pylate_mini):
    """
    A text's bfloat16 encoding barely depends on its batch: alone, in batches of 1, 2 and 32.
    """

    model = ColBERT(str(pylate_mini), device="cpu", half=True)
    for texts, category in ((DOCUMENTS, "data"), (QUERIES, "query")):
        whole = model.encode(texts, category, batch=32)
        for batch in (1, 2):
            assert cosines(model.encode(texts, category, batch=batch), whole).min() >= 0.9999

        assert cosines([model.encode([text], category)[0] for text in texts], whole).min() >= 0.9999


def test_bad_half(pylate_checkpoint):
    """
    half takes True or False only.
    """

    for value in ("yes", 1, None):
        with pytest.raises(ValueError, match=f"half must be True or False, got {value!r}"):
            ColBERT(str(pylate_checkpoint), device="cpu", half=value)


def test_emulated_warning(pylate_checkpoint, monkeypatch, caplog):
    """
    On a CPU without native bfloat16 half=True still works and warns that it may be slower.
    """

    monkeypatch.setattr(colbertmodule, "bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=colbertmodule.__name__):
        model = ColBERT(str(pylate_checkpoint), device="cpu", half=True)

    assert "without native bfloat16" in caplog.text
    assert len(model.encode(DOCUMENTS)) == len(DOCUMENTS)


def test_embeddings(pylate_checkpoint, tmp_path):
    """
    Embeddings(sparse={"vectors": {"half": True}}) encodes in bfloat16, keeps the option in config.json and reloads with it;
    top results match the float32 index.
    """

    # pylint: disable=C0415
    from txtai import Embeddings

    import txtai_muvera  # noqa: F401 pylint: disable=W0611

    documents = [(x, text, None) for x, text in enumerate(DOCUMENTS)]
    results = {}
    for name, options in (("float32", {"device": "cpu"}), ("half", {"device": "cpu", "half": True})):
        embeddings = Embeddings(sparse={"path": str(pylate_checkpoint), "vectors": options}, content=True)
        embeddings.index(documents)
        results[name] = [[row["id"] for row in embeddings.search(query, 3)] for query in QUERIES]

    embeddings.save(str(tmp_path / "index"))
    with open(tmp_path / "index" / "config.json", encoding="utf-8") as f:
        assert json.load(f)["scoring"]["vectors"]["half"] is True

    loaded = Embeddings()
    loaded.load(str(tmp_path / "index"))
    assert loaded.scoring.encoder.autocast
    assert [[row["id"] for row in loaded.search(query, 3)] for query in QUERIES] == results["half"] == results["float32"]
