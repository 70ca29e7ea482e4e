"""
Bad settings are refused when the index is built, by one schema, naming the key, the value and what is accepted
"""

import re

import pytest

from txtai import Embeddings

import txtai_muvera  # pylint: disable=W0611

from checkpoints import build_pylate_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=16)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"tokens": "float64"}, "tokens must be one of .* got 'float64'"),
        ({"tokens": 8}, "tokens must be one of .* got 8"),
        ({"candidates": "100"}, "candidates must be an integer >= 1, got '100'"),
        ({"candidates": 0}, "candidates must be an integer >= 1, got 0"),
        ({"candidates": 2.5}, "candidates must be an integer >= 1, got 2.5"),
        ({"candidates": True}, "candidates must be an integer >= 1, got True"),
        ({"rerank": "no"}, "rerank must be true or false, got 'no'"),
        ({"ann": {"hnsw": {"m": 0}}}, r"ann.hnsw.m must be an integer >= 2, got 0"),
        ({"ann": {"hnsw": {"efsearch": -1}}}, r"ann.hnsw.efsearch must be an integer >= 1, got -1"),
        ({"ann": {"fastscan": {"factor": 0}}}, r"ann.fastscan.factor must be an integer >= 1, got 0"),
        ({"ann": {"fastscan": {"threshold": "big"}}}, r"ann.fastscan.threshold must be an integer >= 0, got 'big'"),
        ({"ann": {"index": "fastscan", "quantize": "pq"}}, r"index fastscan re-scores float or sq8 vectors: quantize must be None or sq8, got 'pq'"),
        ({"backend": "elastic"}, "backend must be one of faiss, pgvector, got 'elastic'"),
        ({"pool": 0}, "pool must be an integer >= 1, got 0"),
        ({"muvera": [20]}, "muvera must be a dict of options"),
    ],
)
def test_bad_settings(checkpoint, settings, message):
    # Refused before anything is written: index() raises the setting's own error (not txtai's "Unable to resolve scoring
    # backend" ImportError with the real error as its cause), nothing is half-built
    embeddings = Embeddings(sparse={"path": checkpoint, **settings}, content=True)
    with pytest.raises((ValueError, TypeError)) as info:
        embeddings.index(["music history", "weather sports"])

    assert re.search(message, str(info.value))
    assert embeddings.count() == 0


def test_integral_values_accepted(checkpoint):
    # Whole-number floats (YAML and JSON often give them) are accepted and saved as integers
    embeddings = Embeddings(sparse={"path": checkpoint, "candidates": 50.0, "muvera": {"repetitions": 2}}, content=True)
    embeddings.index(["music history", "weather sports"])
    assert embeddings.config["scoring"]["candidates"] == 50 and isinstance(embeddings.config["scoring"]["candidates"], int)


@pytest.mark.parametrize("uid", [float("nan"), float("inf"), True, b"raw"])
def test_bad_ids(checkpoint, uid):
    # Ids that could never be deleted or replaced (NaN never equals itself, True is 1, bytes) are refused, and
    # through the transaction helper nothing of the call stays
    from txtai_muvera import transaction  # pylint: disable=C0415

    embeddings = Embeddings(sparse={"path": checkpoint}, content=True)
    embeddings.index([("a", "music history", None)])
    with pytest.raises((TypeError, ValueError), match="Document id"):
        transaction.upsert(embeddings, [("b", "weather sports", None), (uid, "food travel", None)])

    assert embeddings.count() == 1 and [row["id"] for row in embeddings.search("select id from txtai")] == ["a"]
