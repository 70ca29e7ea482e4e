"""
Evaluation: BEIR loading, ranx metrics against plain loops, the three modes against brute force, reports and the command line
"""

import argparse
import json
import math
import os

import numpy as np
import pytest

from txtai_muvera import ColBERT
from txtai_muvera.tools.evaluation import BEIR, METRICS, Metrics, Report, Run, evaluate
from txtai_muvera.tools.evaluation import cli

from checkpoints import WORDS, build_pylate_checkpoint

MUVERA = {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}


def write(folder, documents, queries, qrels, header=True, titles=True):
    """
    Writes a BEIR-layout folder.

    Args:
        folder: output folder
        documents: list of (id, title, text)
        queries: list of (id, text)
        qrels: list of (query id, document id, score)
        header: write the header row
        titles: write the title field (empty titles are written as "")

    Returns:
        folder as a string
    """

    os.makedirs(os.path.join(folder, "qrels"), exist_ok=True)
    with open(os.path.join(folder, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for uid, title, text in documents:
            f.write(json.dumps({"_id": uid, **({"title": title} if titles else {}), "text": text}) + "\n")
    with open(os.path.join(folder, "queries.jsonl"), "w", encoding="utf-8") as f:
        for uid, text in queries:
            f.write(json.dumps({"_id": uid, "text": text, "metadata": {}}) + "\n")
    with open(os.path.join(folder, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n" if header else "")
        f.write("".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))

    return str(folder)


def dataset(folder, seed, size=40, header=True):
    """
    Writes a random BEIR-layout folder: size documents, 8 queries of which 6 are judged (graded 0..2), 2 unjudged.

    Returns:
        folder
    """

    rng = np.random.default_rng(seed)
    documents = [(f"doc{x}", " ".join(rng.choice(WORDS, 2)) if x % 3 else "", " ".join(rng.choice(WORDS, rng.integers(4, 30)))) for x in range(size)]
    queries = [(f"q{x}", " ".join(rng.choice(WORDS, rng.integers(2, 6)))) for x in range(8)]
    qrels = [(f"q{x}", f"doc{d}", int(rng.integers(0, 3))) for x in range(6) for d in rng.choice(size, 4, replace=False)]
    return write(folder, documents, queries, qrels, header=header)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=48)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return dataset(tmp_path_factory.mktemp("beir") / "tiny", 0)


# Loading


def test_header_or_not(tmp_path):
    documents = [("a", "Title", "text a"), ("b", "", "text b"), ("c", "T", "text c")]
    queries = [("1", "query one"), ("2", "query two"), ("3", "not judged")]
    qrels = [("1", "a", 2), ("1", "b", 0), ("2", "c", 1)]

    with_header = BEIR.load(write(tmp_path / "h", documents, queries, qrels, header=True))
    without = BEIR.load(write(tmp_path / "n", documents, queries, qrels, header=False))
    notitles = BEIR.load(write(tmp_path / "t", documents, queries, qrels, titles=False))

    for data in (with_header, without):
        assert data.qrels == {"1": {"a": 2, "b": 0}, "2": {"c": 1}}
        assert data.queries == {"1": "query one", "2": "query two"}
        assert data.corpus == {"a": "Title text a", "b": "text b", "c": "T text c"}
        assert data.documents()[0] == ("a", "Title text a", None)

    assert notitles.corpus == {"a": "text a", "b": "text b", "c": "text c"}
    assert with_header.name == "h"


def test_caps_keep_judged(tmp_path):
    documents = [(f"d{x}", "", f"text {x}") for x in range(20)]
    queries = [("1", "one"), ("2", "two"), ("3", "three")]
    qrels = [("1", "d15", 1), ("2", "d19", 1), ("3", "d0", 1)]
    data = BEIR.load(write(tmp_path / "c", documents, queries, qrels), maxqueries=2, maxdocs=5)

    assert list(data.queries) == ["1", "2"]
    assert set(data.qrels) == {"1", "2"}
    assert len(data.corpus) == 5 and {"d15", "d19"} <= set(data.corpus)


def test_repeated_ids_keep_first(tmp_path, caplog):
    # A corpus that repeats an id (as WordNet's spelling variants do) loads with the first text of each id, and says so
    documents = [("a", "A", "first"), ("b", "", "other"), ("a", "A2", "second")]
    with caplog.at_level("WARNING", logger="txtai_muvera.tools.evaluation.beir"):
        data = BEIR.load(write(tmp_path / "d", documents, [("1", "q")], [("1", "a", 1)]))

    assert list(data.corpus) == ["a", "b"] and "first" in data.corpus["a"] and "second" not in data.corpus["a"]
    assert "repeats 1 document ids (first 'a')" in caplog.text


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="BEIR-layout"):
        BEIR.load(tmp_path)

    folder = write(tmp_path / "x", [("a", "", "text")], [("1", "q")], [("1", "a", 1), ("2", "a", 1)])
    with pytest.raises(ValueError, match="missing from"):
        BEIR.load(folder)

    with pytest.raises(ValueError, match="maxdocs"):
        BEIR.load(write(tmp_path / "y", [("a", "", "text")], [("1", "q")], [("1", "a", 1)]), maxdocs=0)


# Metrics


def slow(qrels, ranking):
    """
    Plain-loop metrics for one query, from their trec_eval definitions. Relevant: score > 0; nDCG gain: the score.

    Returns:
        dict of metric -> value
    """

    relevant = {d for d, s in qrels.items() if s > 0}
    results = {}
    for k in (1, 3, 5, 10):
        top = ranking[:k]
        hits = sum(1 for d in top if d in relevant)
        results[f"accuracy@{k}"] = 1.0 if hits else 0.0
        results[f"precision@{k}"] = hits / k
        results[f"recall@{k}"] = hits / len(relevant) if relevant else 0.0

    hits = sum(1 for d in ranking[:100] if d in relevant)
    results["recall@100"] = hits / len(relevant) if relevant else 0.0

    dcg = sum(qrels.get(d, 0) / math.log2(x + 2) for x, d in enumerate(ranking[:10]) if qrels.get(d, 0) > 0)
    ideal = sum(s / math.log2(x + 2) for x, s in enumerate(sorted((s for s in qrels.values() if s > 0), reverse=True)[:10]))
    results["ndcg@10"] = dcg / ideal if ideal else 0.0

    results["mrr@10"] = 0.0
    for x, d in enumerate(ranking[:10]):
        if d in relevant:
            results["mrr@10"] = 1.0 / (x + 1)
            break

    precisions, hits = [], 0
    for x, d in enumerate(ranking[:100]):
        if d in relevant:
            hits += 1
            precisions.append(hits / (x + 1))
    results["map@100"] = sum(precisions) / len(relevant) if relevant else 0.0

    return results


def test_metrics_match_loops():
    rng = np.random.default_rng(3)
    documents = [f"d{x}" for x in range(150)]

    qrels, run = {}, {}
    for x in range(25):
        judged = rng.choice(documents, int(rng.integers(1, 15)), replace=False)
        qrels[f"q{x}"] = {d: int(rng.integers(0, 4)) for d in judged}
        run[f"q{x}"] = list(rng.choice(documents, int(rng.integers(0, 120)), replace=False))

    # Edge cases: zeros only, no results, and a run for a query that is not judged (ignored)
    qrels["zeros"], run["zeros"] = {"d1": 0, "d2": 0}, ["d1", "d2"]
    qrels["empty"], run["empty"] = {"d3": 1}, []
    run["unjudged"] = ["d1"]

    values = Metrics()(qrels, run, mean=False)
    means = Metrics()(qrels, run)
    assert list(values) == list(METRICS)
    for name in METRICS:
        expected = [slow(qrels[uid], run.get(uid, []))[name] for uid in qrels]
        assert np.allclose(values[name], expected, atol=1e-9), name
        assert means[name] == pytest.approx(np.mean(expected), abs=1e-9)


def test_metrics_keep_rank_order():
    # Run order is what counts, not any score: the relevant document at rank 2 gives MRR 0.5
    assert Metrics(["mrr@10"])({"q": {"b": 1}}, {"q": ["a", "b", "c"]}) == {"mrr@10": 0.5}

    with pytest.raises(ValueError, match="Unknown metric"):
        Metrics(["ndcg@7"])


# Modes


def brute(checkpoint, data):
    """
    Brute-force exact MaxSim: every query against every document with plain loops, documents stored as float16.

    Returns:
        list of {document id: score} per query
    """

    model = ColBERT(checkpoint)
    dtokens = [d.astype(np.float16).astype(np.float32) for d in model.encode(list(data.corpus.values()), "data")]
    qtokens = model.encode(list(data.queries.values()), "query")

    return [{uid: float(np.mean([max(float(np.dot(t, u)) for u in d) for t in q])) for uid, d in zip(data.corpus, dtokens)} for q in qtokens]


def ranked(scores, limit):
    """
    Top documents by brute-force score, ties by corpus order.

    Returns:
        list of document ids
    """

    return sorted(scores, key=lambda uid: -scores[uid])[:limit]


def same(ranking, scores, limit):
    """
    Checks that a ranking is the exact top `limit`: position by position, its documents score what the brute-force top documents
    score (float32 against float64 sums can swap documents whose scores differ by less than 1e-5, a tie either way).
    """

    assert len(ranking) == len(set(ranking)) == limit
    assert np.allclose([scores[uid] for uid in ranking], [scores[uid] for uid in ranked(scores, limit)], atol=1e-5)


def test_modes(checkpoint, folder):
    data = BEIR.load(folder)
    expected = brute(checkpoint, data)

    run = Run(checkpoint, muvera=MUVERA, candidates=len(data.corpus), ann={"index": "flat"}, chunk=7)
    embeddings = run.index(data)
    try:
        # Exact mode: the brute-force top documents and their scores, whatever the chunk size
        texts, docids = list(data.queries.values()), list(data.corpus)
        exact = run.exact(embeddings, texts, 15)
        for (ids, values), scores in zip(exact, expected):
            same([docids[x] for x in ids], scores, 15)
            assert np.allclose(values, [scores[docids[x]] for x in ids], atol=1e-5)

        run.chunk = 1000
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(exact, run.exact(embeddings, texts, 15)))

        # Modes through txtai: maxsim is the exact search; rerank over every document is too
        results = {mode: run.search(embeddings, data, mode, 15)["run"] for mode in ("maxsim", "rerank", "muvera")}
    finally:
        embeddings.close()

    assert list(results["maxsim"]) == list(results["rerank"]) == list(data.queries)
    assert list(results["maxsim"].values()) == [[docids[x] for x in ids] for ids, _ in exact]
    for ranking, scores in zip(results["rerank"].values(), expected):
        same(ranking, scores, 15)
    assert all(len(ranking) == 15 and len(set(ranking)) == 15 for ranking in results["muvera"].values())


def test_evaluate_and_report(checkpoint, folder, tmp_path):
    other = dataset(tmp_path / "other", 1, size=30, header=False)
    cache = str(tmp_path / "cache")
    report = evaluate([folder, other], checkpoint, muvera=MUVERA, candidates=100, ann={"index": "flat"}, cache=cache)

    # Rows per dataset and mode, every metric in [0, 1]
    assert [(row["dataset"], row["mode"]) for row in report.rows] == [(d, m) for d in ("tiny", "other") for m in ("maxsim", "rerank", "muvera")]
    for row in report.rows:
        assert row["queries"] == 6
        assert all(0.0 <= row[x] <= 1.0 for x in METRICS)

    # Mean row = mean of rows
    means = report.means()
    assert [row["mode"] for row in means] == ["maxsim", "rerank", "muvera"]
    for mean in means:
        rows = [row for row in report.rows if row["mode"] == mean["mode"]]
        assert all(mean[x] == pytest.approx(np.mean([row[x] for row in rows])) for x in METRICS)

    # JSON lines: one per row, then the means
    lines = [json.loads(line) for line in report.jsonl().splitlines()]
    assert len(lines) == 6 + 3 and [line["dataset"] for line in lines[-3:]] == ["mean"] * 3
    assert lines[0]["muvera"]["repetitions"] == 4 and lines[0]["ann"]["type"] == "flat"

    # Card table: per mode, a header, a rule and one line per metric, columns: metric, two datasets, mean
    table = report.table()
    blocks = [block for block in table.split("\n\n") if block.startswith("|")]
    assert len(blocks) == 3
    for block in blocks:
        rows = block.strip().splitlines()
        assert len(rows) == 2 + len(METRICS) and rows[0] == "| metric | tiny | other | mean |"
        assert all(len(row.split("|")) == 6 for row in rows)

    # Rows table: header, rule, 3 modes x (2 datasets + mean)
    rows = report.table("rows").strip().splitlines()
    assert len(rows) == 2 + 9 and all(len(row.split("|")) == len(METRICS) + 4 for row in rows)

    # A second run loads the cached indexes and gives the same numbers
    again = evaluate([folder, other], checkpoint, muvera=MUVERA, candidates=100, ann={"index": "flat"}, cache=cache)
    assert [row["indexing"] for row in again.rows] == [None] * 6
    assert all(a[x] == b[x] for a, b in zip(report.rows, again.rows) for x in METRICS)


def test_single_dataset_has_no_mean():
    report = Report()
    report.add("one", "muvera", {x: 0.5 for x in METRICS})
    assert not report.means()
    assert report.table().splitlines()[2] == "| metric | one |"

    with pytest.raises(ValueError, match="lacks"):
        report.add("one", "muvera", {"ndcg@10": 0.5})


def test_cli(checkpoint, folder, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.configure(parser.add_subparsers(dest="command"))

    output = tmp_path / "out" / "results.jsonl"
    args = parser.parse_args(
        ["evaluate", folder, "--model", checkpoint, "--modes", "maxsim,muvera", "--repetitions", "4", "--hashes", "3", "--projection", "8"]
        + ["--max-queries", "3", "--output", str(output)]
    )
    assert args.command == "evaluate" and args.muvera_repetitions == 4 and args.muvera_fill is False
    assert cli.run(args) == 0

    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [(line["mode"], line["queries"]) for line in lines] == [("maxsim", 3), ("muvera", 3)]
    assert lines[1]["muvera"] == {**MUVERA, "seed": 42, "fill": False, "final": None}

    printed = capsys.readouterr().out
    assert "**full MaxSim**" in printed and "| ndcg@10 |" in printed

    with pytest.raises(ValueError, match="mode"):
        cli.run(parser.parse_args(["evaluate", folder, "--model", checkpoint, "--modes", "bm25"]))
