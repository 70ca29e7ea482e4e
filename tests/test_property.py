"""
Consistency under change: random index / upsert / delete / save / load / search sequences against a brute-force reference, on
every storage engine (`engine` fixture: faiss files; pgvector with content in the same PostgreSQL)
"""

import tempfile

import faiss
import numpy as np
import pytest

from hypothesis import HealthCheck, given, settings, strategies as st
from txtai import Embeddings

from txtai_muvera import ColBERT, durable
from txtai_muvera.core.options import SearchOptions

from checkpoints import build_pylate_checkpoint

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()

MUVERA = {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}

# Texts and queries drawn by the test, ids from a small pool so upserts replace and deletes hit
TEXTS = [" ".join(np.random.default_rng(x).choice(WORDS, size=3 + x % 7)) for x in range(24)]
QUERIES = ["music history", "token vector search", "weather food travel"]
IDS = [f"id{x}" for x in range(10)]

# Unique ids within a call: duplicate ids in one call are txtai's behaviour, covered in test_reliability.py
documents = st.lists(st.tuples(st.sampled_from(IDS), st.integers(0, len(TEXTS) - 1)), min_size=1, max_size=6, unique_by=lambda x: x[0])
initial = st.lists(st.tuples(st.sampled_from(IDS), st.integers(0, len(TEXTS) - 1)), min_size=3, max_size=8, unique_by=lambda x: x[0])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("index"), documents),
        st.tuples(st.just("upsert"), documents),
        st.tuples(st.just("delete"), st.lists(st.sampled_from(IDS), min_size=1, max_size=3)),
        st.tuples(st.just("save"), st.none()),
        st.tuples(st.just("search"), st.integers(1, 8)),
    ),
    min_size=3,
    max_size=8,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    checkpoint = build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=32)

    # Reference tokens: float16 as stored, computed once per text and query
    model = ColBERT(checkpoint)
    texts = [x.astype(np.float16).astype(np.float32) for x in model.encode(TEXTS, "data")]
    queries = model.encode(QUERIES, "query")
    return checkpoint, texts, queries


def maxsim(query, document):
    """
    MaxSim by plain loops: mean over query tokens of the best document-token dot product.
    """

    return float(np.mean([max(float(np.dot(q, d)) for d in document) for q in query]))


def check(embeddings, current, world, limit):
    """
    Compares every query with the brute-force reference and checks that ids, FDE rows, token rows and content rows agree.
    """

    _, texts, queries = world
    if not current:
        assert not embeddings.count()
        return

    # Same live index ids in the storage engine and the content database, each with the token rows of its current text (the
    # scoring count first: it applies deletes txtai staged)
    count = embeddings.scoring.count()
    storage = embeddings.scoring.storage
    rows = {row["indexid"]: row["id"] for row in embeddings.search("select id, indexid from txtai", 1000)}
    ids = np.sort(storage.ids())
    assert ids.tolist() == sorted(rows)
    assert embeddings.count() == count == storage.count() == len(rows) == len(current)
    assert sorted(rows.values()) == sorted(current)
    tokens, offsets, _ = storage.gather(ids)
    for x, uid in enumerate(ids.tolist()):
        assert np.allclose(tokens[offsets[x] : offsets[x + 1]].astype(np.float32), texts[current[rows[uid]]], atol=1e-6)

    # Every stored document has its FDE row: an FDE search for 1,000 candidates (more than the index holds) finds them all
    _, found = storage.search(np.ones((1, storage.dimensions), dtype=np.float32), 1000, SearchOptions())
    assert sorted(found[0][found[0] >= 0].tolist()) == ids.tolist()

    # The faiss engine: its id map minus its deleted ids is the same set (HNSW keeps removed ids until the next index)
    if hasattr(storage, "fdes"):
        fdes = faiss.vector_to_array(storage.fdes.backend.id_map)
        assert set(fdes.tolist()) - set(storage.fdes.deleted.tolist()) == set(ids.tolist())

    for query, tokens in zip(QUERIES, queries):
        reference = {uid: maxsim(tokens, texts[text]) for uid, text in current.items()}
        results = embeddings.search(query, limit)
        expected = sorted(reference.values(), reverse=True)[:limit]
        assert len(results) == len(expected)
        assert np.allclose([row["score"] for row in results], expected, atol=1e-5)
        assert all(abs(row["score"] - reference[row["id"]]) < 1e-5 and row["text"] == TEXTS[current[row["id"]]] for row in results)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(initial, operations)
def test_random_sequences(world, engine, first, steps):
    embeddings = Embeddings(engine.config({"path": world[0], "muvera": dict(MUVERA), "candidates": 1000}))
    current = {}

    try:
        with tempfile.TemporaryDirectory() as directory:
            for operation, argument in [("index", first)] + steps:
                if operation in ("index", "upsert"):
                    getattr(embeddings, operation)([(uid, TEXTS[text], None) for uid, text in argument])
                    current = {} if operation == "index" else current
                    current.update(dict(argument))
                elif operation == "delete":
                    if embeddings.count():
                        assert sorted(embeddings.delete(argument)) == sorted(set(argument) & set(current))
                    for uid in argument:
                        current.pop(uid, None)
                elif operation == "save":
                    if embeddings.count():
                        durable.save(embeddings, f"{directory}/index")
                        embeddings.close()
                        embeddings = durable.load(f"{directory}/index")

                # Every step is checked: searches with the drawn limit, changes with 5
                check(embeddings, current, world, argument if operation == "search" else 5)
    finally:
        # Failing examples too: hypothesis runs many while shrinking, each holding database connections until closed
        embeddings.close()
