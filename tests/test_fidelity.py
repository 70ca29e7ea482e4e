"""
Fidelity: the label-free estimate of how much of exact MaxSim a stored form keeps, its kernels against plain loops, the ladder
that chooses token settings for a target, and how an index records, reports and rolls them back
"""

import json
import math

import numpy as np
import pytest

from txtai import Embeddings

from txtai_muvera.core import codecs, fidelity
from txtai_muvera.core.maxsim import maxsim_flat
from txtai_muvera.core.store import TokenStore

from checkpoints import build_pylate_checkpoint

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()


def corpus(size, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(6, 20))) for _ in range(size)]


def matrices(count, dim=16, seed=0):
    # Unit token rows around a few shared directions, so documents have near neighbours as real ones do
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(8, dim))
    result = []
    for _ in range(count):
        rows = topics[rng.integers(0, 8, size=rng.integers(3, 30))] + 0.6 * rng.normal(size=(1, dim))
        rows += 0.5 * rng.normal(size=rows.shape)
        result.append((rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))
    return result


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=32)


def test_scores_match_maxsim_flat():
    # The batched kernel against one maxsim_flat call per query, float32 and int8 rows, blocks smaller than a document
    documents, queries = matrices(40), [x[:5] for x in matrices(7, seed=1)]
    tokens, offsets = fidelity.flatten(documents)
    expected = np.stack([maxsim_flat(query, tokens, offsets) for query in queries])
    for rows in (1, 25, 10**6):
        assert np.allclose(fidelity.scores(queries, tokens, offsets, rows=rows), expected, atol=1e-6)

    store = TokenStore(16, "int8")
    store.add(np.arange(40), documents)
    tokens, offsets, scale = store.gather(np.arange(40))
    expected = np.stack([maxsim_flat(query, tokens, offsets, scale) for query in queries])
    assert np.allclose(fidelity.scores(queries, tokens, offsets, scale, rows=30), expected, atol=1e-6)

    with pytest.raises(ValueError, match="at least one token row"):
        fidelity.scores(queries, tokens, np.array([0, 0, *offsets[1:]]))


def loops(exact, stored, depth=10):
    # Plain twin of agreement: one query at a time, python lists
    ndcgs, overlaps, errors = [], [], []
    for e, s in zip(exact.tolist(), stored.tolist()):
        reference = sorted(range(len(e)), key=lambda x: (-e[x], x))[:depth]
        ranking = sorted(range(len(s)), key=lambda x: (-s[x], x))[:depth]
        gain = {doc: depth - rank for rank, doc in enumerate(reference)}
        dcg = sum(gain.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking))
        ideal = sum((depth - rank) / math.log2(rank + 2) for rank in range(depth))
        ndcgs.append(dcg / ideal)
        overlaps.append(len(set(reference) & set(ranking)) / depth)
        errors.append(sum(abs(a - b) for a, b in zip(e, s)) / len(e))
    return {"ndcg": np.mean(ndcgs), "overlap": np.mean(overlaps), "error": np.mean(errors)}


def test_agreement_matches_loops():
    rng = np.random.default_rng(3)
    exact = rng.normal(size=(20, 60))
    for noise in (0.0, 0.05, 0.5, 5.0):
        stored = exact + noise * rng.normal(size=exact.shape)
        result, expected = fidelity.agreement(exact, stored), loops(exact, stored)
        assert all(abs(result[key] - expected[key]) < 1e-9 for key in expected)

    # Identical rankings agree fully; a reversed ranking keeps nothing of the top 10
    assert fidelity.agreement(exact, exact * 2)["ndcg"] == 1.0
    assert fidelity.agreement(exact, -exact)["overlap"] == 0.0
    with pytest.raises(ValueError, match="same"):
        fidelity.agreement(exact, exact[:, :5])


def test_sample():
    documents = matrices(150) + [np.zeros((0, 16), np.float32)]
    sample = fidelity.Sample(documents, queries=32, seed=5)

    # Documents without tokens are left out; every pseudo-query is a span of 8 to 16 rows of one sample document
    assert len(sample) == 150 and len(sample.queries) == 32 and sample.exact.shape == (32, 150)
    for query in sample.queries:
        assert min(8, max(len(x) for x in documents)) <= len(query) <= 16 or any(len(query) == len(x) for x in documents)
        assert any(any(np.array_equal(query, x[s : s + len(query)]) for s in range(len(x) - len(query) + 1)) for x in sample.documents)

    # Seeded: the same sample twice gives the same queries; float tokens measured as stored agree exactly
    again = fidelity.Sample(documents, queries=32, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(sample.queries, again.queries))
    assert sample.measure(*fidelity.flatten(sample.documents))["ndcg"] == 1.0

    with pytest.raises(ValueError, match="at least 100 documents, got 99"):
        fidelity.Sample(matrices(99))


def test_residual_shared_centroids():
    # A codec trained with another's centroids keeps them and learns its own buckets: the same as k-means then buckets
    rows = np.concatenate(matrices(200))
    two = codecs.create("residual", 16, bits=2, centroids=16)
    two.train(rows)
    four = codecs.create("residual", 16, bits=4)
    four.train(rows, centroids=two.centroids)
    assert np.array_equal(four.centroids, two.centroids) and four.options["centroids"] == 16 and four.cutoffs.shape == (15, 16)

    twin = codecs.create("residual", 16, bits=4, centroids=16)
    twin.train(rows)
    assert np.array_equal(twin.centroids, two.centroids) and np.allclose(twin.weights, four.weights)
    assert np.abs(four.decode(four.encode(rows)) - rows).mean() < np.abs(two.decode(two.encode(rows)) - rows).mean()


def test_ladder():
    sample = fidelity.Sample(matrices(160), queries=48)

    # Rungs in stored bytes per unpooled token; measured bytes agree with that order for the same pool factor
    rungs = fidelity.order(fidelity.LADDER, 16)
    assert [fidelity.name(x) for x in rungs][0] == "pool 3, residual 2-bit" and rungs[-1]["tokens"] == "float16"

    # Target 0 takes the first rung; an unreachable target measures every rung and keeps the most faithful
    rung, tried = fidelity.choose(sample, 1e-9)
    assert rung == rungs[0] and len(tried) == 1
    rung, tried = fidelity.choose(sample, 1.0 + 1e-9)
    assert len(tried) == len(rungs) and tried[-1][1]["ndcg"] > 0.99
    assert rung == max(tried, key=lambda x: x[1]["ndcg"])[0]

    # A reachable target stops at the first rung that reaches it, and every rung before it falls short
    target = sorted(x[1]["ndcg"] for x in tried)[len(tried) // 2]
    rung, steps = fidelity.choose(sample, target)
    assert steps[-1][0] == rung and steps[-1][1]["ndcg"] >= target and all(x[1]["ndcg"] < target for x in steps[:-1])

    # More bits at the same pool factor keep more of exact MaxSim
    result = {fidelity.name(r): x for r, x in tried}
    assert result["pool 1, residual 4-bit"]["ndcg"] > result["pool 1, residual 2-bit"]["ndcg"]
    assert result["pool 1, residual 4-bit"]["bytes"] > result["pool 1, residual 2-bit"]["bytes"]


def test_index_chooses_and_reports(checkpoint, monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("TXTAI_MUVERA_PRESET", raising=False)
    documents = corpus(150)

    # A first write of fewer than 100 documents keeps the preset's settings and measures nothing
    embeddings = Embeddings(sparse=checkpoint, content=True)
    embeddings.index(documents[:50])
    config = embeddings.config["scoring"]
    assert "estimate" not in config and config["pool"] == 2 and config["choose"]

    # A first build of enough documents chooses from the ladder, logs it and records the estimate in the saved config
    with caplog.at_level("INFO", logger="txtai_muvera.glue.scoring"):
        embeddings.index(documents)
    config = embeddings.config["scoring"]
    estimate = config["estimate"]
    assert not config["choose"] and estimate["documents"] == 150 and estimate["queries"] == fidelity.QUERIES
    assert estimate["fidelity"] >= config["fidelity"] or estimate["settings"] == "pool 1, float16"
    assert estimate["settings"] == fidelity.name(config) and estimate["ladder"][-1]["settings"] == estimate["settings"]
    assert "Fidelity" in caplog.text and "chosen for fidelity 0.975" in caplog.text
    assert embeddings.search(documents[3], 1)[0]["text"] == documents[3]

    embeddings.save(str(tmp_path / "index"))
    loaded = Embeddings()
    loaded.load(str(tmp_path / "index"))
    assert loaded.config["scoring"]["estimate"] == estimate and loaded.config["scoring"]["pool"] == config["pool"]

    # Settings given in the config are kept and measured as they are
    given = Embeddings(sparse={"path": checkpoint, "pool": 3, "tokens": "residual"}, content=True)
    given.index(documents)
    config = given.config["scoring"]
    assert config["pool"] == 3 and config["estimate"]["settings"] == "pool 3, residual 2-bit" and "ladder" not in config["estimate"]

    # No target: the preset's settings, measured
    fixed = Embeddings(sparse={"path": checkpoint, "preset": "small"}, content=True)
    fixed.index(documents)
    assert fixed.config["scoring"]["estimate"]["settings"] == "pool 3, residual 2-bit"


def test_failed_first_write_restores_settings(checkpoint, monkeypatch):
    # A first build that fails after its calibration chose settings leaves the config as it was: the next write chooses again
    monkeypatch.delenv("TXTAI_MUVERA_PRESET", raising=False)
    from txtai_muvera import MuveraScoring

    scoring = MuveraScoring({"path": checkpoint})
    documents = [(x, text, None) for x, text in enumerate(corpus(fidelity.DOCUMENTS))]
    scoring.insert(documents)
    assert "estimate" in scoring.config and not scoring.config["choose"]

    scoring.insert([(fidelity.DOCUMENTS, 5, None)], fidelity.DOCUMENTS)
    with pytest.raises(TypeError, match="has int text"):
        scoring.index()
    config = scoring.config
    assert config["pool"] == 2 and config["tokens"] == "adaptive" and config["adaptive"]["bits"] == 2.5 and config["choose"]
    assert "estimate" not in config

    scoring.index(documents[:150])
    assert scoring.config["estimate"]["documents"] == 150 and "ladder" in scoring.config["estimate"] and scoring.count() == 150


def test_command_line(checkpoint, monkeypatch, tmp_path, capsys):
    # `txtai-muvera index` prints the estimate and `info` shows it, in text and JSON
    from txtai_muvera.tools.cli import main

    monkeypatch.setenv("TXTAI_MUVERA_PRESET", "compact")
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text("\n".join(json.dumps({"id": f"d{x}", "text": text}) for x, text in enumerate(corpus(120))), encoding="utf-8")
    assert main(["index", str(corpus_file), str(tmp_path / "index"), "--model", checkpoint, "--quiet"]) == 0
    output = capsys.readouterr().out
    assert "Fidelity " in output and "estimated on 120 documents" in output and "chosen for fidelity 0.975" in output

    assert main(["info", str(tmp_path / "index"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fidelity"]["documents"] == 120 and info["fidelity target"] == 0.975 and info["fidelity"]["ladder"]

    assert main(["info", str(tmp_path / "index")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("fidelity"))
    assert f"{info['fidelity']['fidelity']:.3f} of exact MaxSim nDCG@10" in line and "chosen for target 0.975" in line


def test_failed_measurement_keeps_write(checkpoint, monkeypatch, caplog):
    # A measurement that fails is logged; the write goes on with the settings as configured
    monkeypatch.delenv("TXTAI_MUVERA_PRESET", raising=False)

    def broken(*args):
        raise FloatingPointError("degenerate sample")

    monkeypatch.setattr(fidelity, "choose", broken)
    embeddings = Embeddings(sparse=checkpoint, content=True)
    with caplog.at_level("WARNING", logger="txtai_muvera.glue.scoring"):
        embeddings.index(corpus(120))

    config = embeddings.config["scoring"]
    assert embeddings.count() == 120 and "estimate" not in config and config["pool"] == 2 and config["tokens"] == "adaptive"
    assert "Fidelity not measured, token settings kept as configured: FloatingPointError: degenerate sample" in caplog.text
