"""
ColBERT inference paths (ONNX Runtime float32 and int8) checked against the float32 PyTorch reference
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from encoding import DOCUMENTS, QUERIES, cosines

from txtai_muvera.core.models import ColBERT
from txtai_muvera.core.models import onnx as onnxmodule

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# Stated tolerances: float32 ONNX within FLOAT32 max abs difference per value (measured: 1.8e-07 at most); int8 keeps every
# token's cosine similarity to the reference at or above INT8 (measured minimum: 0.99980 on the random tiny checkpoints,
# 0.99992 on pylate-mini; a trained model loses more, its nDCG cost is measured by benchmarks/encoder_ndcg.py)
FLOAT32 = 1e-5
INT8 = 0.999


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """
    ONNX export cache shared by the tests of this module.
    """

    return tmp_path_factory.mktemp("onnx-cache")


def difference(actual, expected):
    """
    Max abs difference between two lists of token matrices with the same shapes.
    """

    cosines(actual, expected)
    return max(float(np.abs(a - e).max(initial=0)) for a, e in zip(actual, expected))


@pytest.mark.parametrize("layout", ["mini", "pylate", "stanford"])
@pytest.mark.parametrize("compatible", [False, True])
def test_parity(layout, compatible, cache, pylate_mini, pylate_checkpoint, stanford_checkpoint):
    """
    Each path reproduces the float32 PyTorch encoding: float32 within FLOAT32, int8 with every token's cosine >= INT8.
    """

    path = str({"mini": pylate_mini, "pylate": pylate_checkpoint, "stanford": stanford_checkpoint}[layout])
    reference = ColBERT(path, device="cpu", compatible=compatible)
    float32 = ColBERT(path, backend="onnx", cache=str(cache), compatible=compatible)
    int8 = ColBERT(path, backend="onnx", quantize="int8", cache=str(cache), compatible=compatible)

    for texts, category in ((DOCUMENTS, "data"), (QUERIES, "query")):
        expected = reference.encode(texts, category)
        assert difference(float32.encode(texts, category), expected) <= FLOAT32
        assert cosines(int8.encode(texts, category), expected).min() >= INT8


def test_pylate_reference(pylate_mini, cache):
    """
    The float32 ONNX path reproduces the matrices PyLate wrote to the pylate-mini fixture, like the torch path.
    """

    # pylint: disable=C0415
    from safetensors.numpy import load_file

    expected = load_file(str(pylate_mini.parent / "reference.safetensors"))
    with open(pylate_mini.parent / "reference.json", encoding="utf-8") as f:
        texts = json.load(f)

    model = ColBERT(str(pylate_mini), backend="onnx", cache=str(cache))
    for category, key, data in (("query", "query", texts["queries"]), ("data", "document", texts["documents"])):
        assert difference(model.encode(data, category), [expected[f"{key}.{x}"] for x in range(len(data))]) <= 1e-4


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_batch_independence(pylate_mini, cache, quantize):
    """
    A text's encoding does not depend on the batch size or on the other texts of its batch (int8: bit for bit).
    """

    model = ColBERT(str(pylate_mini), backend="onnx", quantize=quantize, cache=str(cache))
    tolerance = 0.0 if quantize else FLOAT32
    for texts, category in ((DOCUMENTS, "data"), (QUERIES, "query")):
        whole = model.encode(texts, category, batch=32)
        for batch in (1, 2):
            assert difference(model.encode(texts, category, batch=batch), whole) <= tolerance

        alone = [model.encode([text], category)[0] for text in texts]
        assert difference(alone, whole) <= tolerance


def test_cache(pylate_checkpoint, tmp_path):
    """
    The first load exports into <cache>/<fingerprint>/<variant>, later loads reuse it without exporting again.
    """

    first = ColBERT(str(pylate_checkpoint), backend="onnx", quantize="int8", cache=str(tmp_path))
    assert first.model.exported
    folder = tmp_path / first.fingerprint
    assert sorted(x.name for x in folder.iterdir()) == ["float32", "int8"]

    stamps = {file: os.stat(file).st_mtime_ns for file in folder.rglob("*") if file.is_file()}
    for quantize in (None, "int8"):
        again = ColBERT(str(pylate_checkpoint), backend="onnx", quantize=quantize, cache=str(tmp_path))
        assert not again.model.exported
        assert again.model.path == str(folder / ("int8" if quantize else "float32") / "model.onnx")

    # Nothing rewritten, no temporary folders left behind
    assert stamps == {file: os.stat(file).st_mtime_ns for file in folder.rglob("*") if file.is_file()}
    assert not [x for x in tmp_path.rglob(".*")]

    # An export from an older format version is rebuilt
    header = folder / "float32" / "header.json"
    header.write_text(json.dumps({"format": 0}), encoding="utf-8")
    assert ColBERT(str(pylate_checkpoint), backend="onnx", cache=str(tmp_path)).model.exported


def test_cache_environment(pylate_checkpoint, tmp_path, monkeypatch):
    """
    Without cache=, exports go to $TXTAI_MUVERA_CACHE/onnx.
    """

    monkeypatch.setenv("TXTAI_MUVERA_CACHE", str(tmp_path))
    model = ColBERT(str(pylate_checkpoint), backend="onnx")
    assert model.model.path == str(tmp_path / "onnx" / model.fingerprint / "float32" / "model.onnx")


def test_bad_options(pylate_checkpoint, monkeypatch):
    """
    Bad backend and quantize values raise a ValueError naming the value and the accepted ones; a missing onnxruntime raises
    an ImportError naming the extra.
    """

    path = str(pylate_checkpoint)
    for options, message in (
        ({"backend": "tensorrt"}, "'tensorrt'.*'torch', 'onnx'"),
        ({"backend": None}, "None.*'torch', 'onnx'"),
        ({"backend": "onnx", "quantize": "int4"}, "'int4'.*None, 'int8'"),
        ({"backend": "onnx", "quantize": True}, "True.*None, 'int8'"),
        ({"quantize": "int8"}, "needs backend='onnx'"),
        ({"backend": "onnx", "half": True}, "use backend='torch'"),
        ({"backend": "onnx", "device": "cuda"}, "use backend='torch'"),
    ):
        with pytest.raises(ValueError, match=message):
            ColBERT(path, **options)

    monkeypatch.setattr(onnxmodule, "ONNX", False)
    with pytest.raises(ImportError, match=r"txtai-muvera\[onnx\]"):
        ColBERT(path, backend="onnx")


def test_no_txtai():
    """
    The encoder modules never import txtai.
    """

    code = "import sys, txtai_muvera.core.models.onnx, txtai_muvera.core.models.colbert; print('txtai' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_embeddings(pylate_checkpoint, cache, tmp_path):
    """
    Embeddings(sparse=...) takes the path through its vectors sub-dict, saves it in config.json and reloads with it; results
    match an index built with the torch path.
    """

    # pylint: disable=C0415
    from txtai import Embeddings

    import txtai_muvera  # noqa: F401 pylint: disable=W0611

    documents = [(x, text, None) for x, text in enumerate(DOCUMENTS)]
    vectors = {"backend": "onnx", "cache": str(cache)}
    results = {}
    for name, options in (("torch", {"device": "cpu"}), ("onnx", vectors)):
        embeddings = Embeddings(sparse={"path": str(pylate_checkpoint), "vectors": options}, content=True)
        embeddings.index(documents)
        results[name] = [[(row["id"], round(row["score"], 4)) for row in embeddings.search(query, 3)] for query in QUERIES]

    embeddings.save(str(tmp_path / "index"))
    with open(tmp_path / "index" / "config.json", encoding="utf-8") as f:
        assert json.load(f)["scoring"]["vectors"]["backend"] == "onnx"

    loaded = Embeddings()
    loaded.load(str(tmp_path / "index"))
    assert [[(row["id"], round(row["score"], 4)) for row in loaded.search(query, 3)] for query in QUERIES] == results["onnx"] == results["torch"]
    assert loaded.scoring.encoder.backend == "onnx"
