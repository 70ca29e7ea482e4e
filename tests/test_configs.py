"""
Shipped YAML configs: each file in configs/ loaded as it is (only model paths substituted) and exercised, the API one through
an HTTP test client
"""

import glob
import importlib.util
import os

import numpy as np
import pytest

from txtai import Embeddings
from txtai.app import Application
from txtai.pipeline import Pipeline

from txtai_muvera import ColBERT

from checkpoints import build_pylate_checkpoint
from texts import QUERIES, SENTENCES

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")

# Model paths named in the shipped files
LATE, DENSE, LLM = "neuml/colbert-muvera-micro", "sentence-transformers/all-MiniLM-L6-v2", "Qwen/Qwen3-0.6B"

DOCUMENTS = SENTENCES + ["travel passages rank with maximum similarity", "every token of the query is matched to a document token"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("late"), hidden=32, dim=16, document_length=48)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    # No projection head: txtai treats it as a plain mean-pooled sentence model
    return build_pylate_checkpoint(tmp_path_factory.mktemp("dense"), hidden=32, head=False, seed=3)


def read(name, **paths):
    """
    Reads a shipped config as text, substituting model paths.
    """

    with open(os.path.join(CONFIGS, name), encoding="utf-8") as f:
        text = f.read()

    for original, path in paths.items():
        text = text.replace({"late": LATE, "dense": DENSE, "llm": LLM}[original], path)

    return text


def reference(checkpoint, documents, queries, limit):
    """
    Brute-force late-interaction ranking: exact MaxSim with plain loops over float16-stored document tokens.

    Returns:
        list of [(position, score)] per query
    """

    model = ColBERT(checkpoint)
    dtokens, results = model.encode(documents, "data"), []
    for query in model.encode(queries, "query"):
        scores = []
        for i, tokens in enumerate(dtokens):
            tokens = tokens.astype(np.float16).astype(np.float32)
            scores.append((i, float(np.mean([max(float(np.dot(q, d)) for d in tokens) for q in query]))))
        results.append(sorted(scores, key=lambda x: (-x[1], x[0]))[:limit])

    return results


def ids(results):
    return [[int(row["id"]) for row in result] for result in results]


def expected(checkpoint, limit=3):
    return [[i for i, _ in result] for result in reference(checkpoint, DOCUMENTS, QUERIES, limit)]


def rows():
    return [{"id": i, "text": text} for i, text in enumerate(DOCUMENTS)]


def test_every_config_tested():
    # A new file in configs/ needs a test here (late-interaction.yml is exercised in test_txtai.py and through the API below)
    tested = {"late-interaction.yml", "hybrid.yml", "workflow.yml", "rag.yml", "api.yml"}
    assert {os.path.basename(x) for x in glob.glob(os.path.join(CONFIGS, "*.yml"))} <= tested


def test_late_interaction(checkpoint):
    application = Application(read("late-interaction.yml", late=checkpoint))
    application.add(rows())
    application.index()
    assert ids(application.batchsearch(QUERIES, 3)) == expected(checkpoint)

    # MUVERA-only through the re-ranker pipeline's per-call switch: FDE scores, still every document reachable
    results = application.pipeline("txtai_muvera.Reranker", QUERIES, 3, rerank=False)
    assert all(len(result) == 3 for result in results)


def test_hybrid(checkpoint, dense):
    application = Application(read("hybrid.yml", late=checkpoint, dense=dense))
    application.add(rows())
    application.index()
    embeddings = application.embeddings
    assert embeddings.config["scoring"]["method"] == "txtai_muvera.MuveraScoring" and embeddings.scoring.isnormalized()

    # Late interaction alone (dense weight 0) ranks exactly as brute-force MaxSim
    assert ids(application.batchsearch(QUERIES, 3, weights=0.0)) == expected(checkpoint)

    # Dense alone (weight 1) ranks as a dense-only index over the same model
    alone = Embeddings(path=dense, content=True)
    alone.index(rows())
    assert ids(application.batchsearch(QUERIES, 3, weights=1.0)) == ids(alone.batchsearch(QUERIES, 3))

    # Default mix: 0.5 x dense + 0.5 x late interaction, per document
    late = {int(r["id"]): r["score"] for r in application.search(QUERIES[0], len(DOCUMENTS), weights=0.0)}
    vectors = {int(r["id"]): r["score"] for r in alone.search(QUERIES[0], len(DOCUMENTS))}
    for row in application.search(QUERIES[0], 5):
        uid = int(row["id"])
        assert row["score"] == pytest.approx(0.5 * vectors.get(uid, 0) + 0.5 * late.get(uid, 0), abs=1e-5)


def test_workflow(checkpoint):
    application = Application(read("workflow.yml", late=checkpoint))

    # Index workflow: buffers the elements, then builds the index when the stream ends
    list(application.workflow("index", rows()))
    assert application.count() == len(DOCUMENTS)

    searched = list(application.workflow("search", QUERIES))
    assert [result[:3] for result in ids(searched)] == expected(checkpoint)

    reranked = list(application.workflow("rerank", QUERIES))
    assert ids(reranked) == expected(checkpoint)

    # Indexing again through the workflow starts over
    list(application.workflow("index", rows()[:5]))
    assert application.count() == 5


class Prompts(Pipeline):
    """
    Stands in for the LLM of the RAG config: returns the prompt it is given, so the test sees exactly what an LLM would.
    """

    def __call__(self, prompts, **kwargs):
        return prompts


def test_rag(checkpoint):
    # As shipped: retrieval only
    text = read("rag.yml", late=checkpoint)
    application = Application(text)
    application.add(rows())
    application.index()
    assert ids(application.pipeline("txtai_muvera.Reranker", QUERIES, 3)) == expected(checkpoint)

    # The documented generation section, uncommented as a user would, with the LLM replaced by a prompt echo
    lines = text.splitlines()
    start = lines.index("# rag:")
    enabled = lines[:start] + [line[2:] if line.startswith("# ") else line[1:] for line in lines[start:]]
    enabled = "\n".join(enabled).replace(LLM, "test_configs.Prompts") + "\ntest_configs.Prompts:\n"

    application = Application(enabled)
    application.add(rows())
    application.index()

    for query, top in zip(QUERIES, expected(checkpoint)):
        answer = application.pipeline("rag", query)
        context = " ".join(DOCUMENTS[i] for i in top)
        assert answer["answer"].strip() == f"Answer the question using only the context below.\n\nQuestion: {query}\nContext: {context}"


@pytest.mark.skipif(importlib.util.find_spec("fastapi") is None, reason="txtai[api] extra not installed (pip install 'txtai[api]')")
def test_api(checkpoint, tmp_path, monkeypatch):
    # pylint: disable=C0415
    from fastapi.testclient import TestClient
    from txtai.api import app

    config = tmp_path / "api.yml"
    config.write_text(read("api.yml", late=checkpoint), encoding="utf-8")
    monkeypatch.setenv("CONFIG", str(config))
    monkeypatch.chdir(tmp_path)

    with TestClient(app) as client:
        assert client.post("/add", json=rows()).status_code == 200
        assert client.get("/index").status_code == 200
        assert client.get("/count").json() == len(DOCUMENTS)

        response = client.get("/search", params={"query": QUERIES[0], "limit": 3})
        assert response.status_code == 200 and [int(row["id"]) for row in response.json()] == expected(checkpoint)[0]

        response = client.post("/batchsearch", json={"queries": QUERIES, "limit": 3})
        assert ids(response.json()) == expected(checkpoint)

        # Delete, then upsert a replacement: searches follow
        first = expected(checkpoint)[0][0]
        assert [int(uid) for uid in client.post("/delete", json=[first]).json()] == [first]
        assert client.get("/count").json() == len(DOCUMENTS) - 1
        assert client.post("/add", json=[{"id": 100, "text": "music and travel"}]).status_code == 200
        assert client.get("/upsert").status_code == 200
        assert int(client.get("/search", params={"query": QUERIES[0], "limit": 1}).json()[0]["id"]) == 100

    # The index was saved at `path`: a restarted API loads it and answers the same
    assert os.path.isfile(tmp_path / "index" / "config.json")
    with TestClient(app) as client:
        assert client.get("/count").json() == len(DOCUMENTS)
        assert int(client.get("/search", params={"query": QUERIES[0], "limit": 1}).json()[0]["id"]) == 100
