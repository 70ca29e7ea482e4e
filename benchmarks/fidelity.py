"""
Fidelity: the build-time estimate (core/fidelity.py, no labels) against what the same token settings keep of exact MaxSim's
nDCG@10 on judged queries.

For each dataset (token matrices cached by `benchmarks/footprint.py --encode`):
  - the estimate, as an index computes it: a Sample of the corpus's first 1,024 documents (the first documents of a write), each
    rung of the ladder measured on it, and the rung the default target chooses, with the time it took;
  - measured, per rung, over the whole corpus: documents pooled and stored with the rung's codec (trained on 65,536 rows, as the
    file engine does), then
      * tokens: exact MaxSim's top 100 re-ranked with the stored tokens (the loss of the tokens alone),
      * pipeline: the default FDE candidates (2,048-dim count-sketched FDEs, sq8, flat) re-ranked with the stored tokens,
    as nDCG@10 relative to exact MaxSim over the float tokens (95% bootstrap interval over queries), the share of exact
    MaxSim's top 10 kept, and the same graded agreement the estimate computes, here on the real queries.

    python benchmarks/fidelity.py                                   # scifact, msmarco-dl19-5k, dbpedia-5k
    python benchmarks/fidelity.py --datasets wordnet-200k --queries 300
    python benchmarks/fidelity.py --report                          # the table again, chosen rungs marked for the target
    python benchmarks/fidelity.py --dims 128 --rungs ladder --output benchmarks/output/fidelity-128.jsonl

--dims 128 gives figures at a ColBERT checkpoint's token width: the stand-in's 384-dim token vectors (documents and queries alike) projected onto 128
orthonormal random directions (seeded) and L2-normalised again, 128 dims of real text; exact MaxSim is
recomputed on the projected tokens.

Appends one JSON line per (dataset, rung) to benchmarks/output/fidelity.jsonl and prints a markdown table.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=C0413
import footprint

from footprint import OUTPUT, DATA, Tokens, chunks

# Rungs measured besides the ladder's: residual 4-bit codes pooled, the adaptive codec at other widths
EXTRA = (
    {"pool": 3, "tokens": "residual", "residual": {"bits": 4}},
    {"pool": 2, "tokens": "residual", "residual": {"bits": 4}},
    {"pool": 2, "tokens": "adaptive", "adaptive": {"bits": 2}},
    {"pool": 2, "tokens": "adaptive", "adaptive": {"bits": 3}},
    {"pool": 1, "tokens": "adaptive", "adaptive": {"bits": 1.5}},
)


def graded(reference, rankings, depth=10):
    """
    Graded agreement of rankings with exact MaxSim's (fidelity.agreement's ndcg, from ranked lists).
    """

    discounts = 1 / np.log2(np.arange(2, depth + 2))
    ideal = (np.arange(depth, 0, -1) * discounts).sum()
    values = []
    for exact, ranking in zip(reference, rankings):
        gains = {doc: depth - rank for rank, doc in enumerate(exact[:depth].tolist())}
        values.append(sum(gains.get(doc, 0) * discounts[rank] for rank, doc in enumerate(ranking[:depth].tolist())) / ideal)
    return float(np.mean(values))


def bootstrap(exact, stored, rounds=2000, seed=0):
    """
    95% interval of mean(stored) / mean(exact) over queries resampled with replacement.
    """

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(exact), size=(rounds, len(exact)))
    ratios = stored[picks].mean(axis=1) / np.maximum(exact[picks].mean(axis=1), 1e-12)
    return [round(float(x), 4) for x in np.quantile(ratios, [0.025, 0.975])]


def candidates(tokens, documents, queries, depth):
    """
    The default FDE candidates of every query: compact preset's MUVERA encoder and FDE index over the unpooled tokens.
    """

    # pylint: disable=C0415
    from txtai_muvera import FDEIndex, Muvera

    encoder = Muvera(final=2048)
    index = FDEIndex(encoder.dimensions(documents[0].shape[1]), index="flat", quantize="sq8")
    fdes = np.concatenate([encoder(documents[a:b], "data") for a, b in chunks(len(documents), 4096)])
    index.index(np.arange(len(documents)), fdes)
    _, ids = index.search(encoder(queries, "query"), min(depth, len(documents)))
    return [row[row >= 0] for row in ids]


def store(documents, rung):
    """
    The corpus stored with a rung's settings, as the file engine stores it.
    """

    # pylint: disable=C0415
    from txtai_muvera.core.pooling import pool
    from txtai_muvera.core.store import TokenStore

    name = rung["tokens"]
    pooled = pool(documents, rung["pool"]) if rung["pool"] > 1 else documents
    result = TokenStore(documents[0].shape[1], name, **rung.get(name, {}))
    if not result.trained:
        rows = np.concatenate(pooled)
        result.train(rows[np.sort(np.random.default_rng(0).choice(len(rows), min(65536, len(rows)), replace=False))])
    result.add(np.arange(len(pooled)), pooled)
    return result


def rerank(tokenstore, queries, lists):
    """
    Stored-token MaxSim ranking of each query's candidates, best first.
    """

    # pylint: disable=C0415
    from txtai_muvera.core.maxsim import maxsim_flat

    rankings = []
    for query, ids in zip(queries, lists):
        tokens, offsets, scale = tokenstore.gather(ids, decode=False)
        rankings.append(ids[np.argsort(-maxsim_flat(query, tokens, offsets, scale), kind="stable")])
    return rankings


def project(matrices, dims, seed=0):
    """
    Token matrices projected onto dims orthonormal random directions (the same for every call with the same seed and width) and
    L2-normalised again.
    """

    width = matrices[0].shape[1]
    basis, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((width, dims)))
    basis = basis.astype(np.float32)
    projected = [x @ basis for x in matrices]
    return [x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in projected]


def run(name, data, limit, target, depth, output, dims=None, rungs="all"):
    """
    Estimates and measures every rung on one dataset; appends JSON lines to output and returns them.
    """

    # pylint: disable=C0415
    from txtai_muvera.core import fidelity
    from txtai_muvera.tools.evaluation import Metrics

    tokens = footprint.load(os.path.join(data, name))
    judged = [x for x, uid in enumerate(tokens.queryids) if uid in tokens.qrels][:limit]
    queries = [tokens.queries()[x] for x in judged]
    tokens.queryids = [tokens.queryids[x] for x in judged]
    tokens.qrels = {uid: tokens.qrels[uid] for uid in tokens.queryids}
    documents = tokens.documents()
    metrics = Metrics(["ndcg@10"])
    suffix = ""
    if dims:
        documents, queries, suffix = project(documents, dims), project(queries, dims), f"-d{dims}"
        tokens = Projected(tokens, documents)

    def perquery(rankings):
        run = {uid: [tokens.docids[x] for x in ranking[:10]] for uid, ranking in zip(tokens.queryids, rankings)}
        return np.asarray(metrics(tokens.qrels, run, mean=False)["ndcg@10"], dtype=np.float64)

    os.makedirs(os.path.join(OUTPUT, "footprint"), exist_ok=True)
    reference = footprint.exact(tokens, queries, os.path.join(OUTPUT, "footprint", f"{name}-{len(queries)}{suffix}-exact.json"))
    exact = perquery(reference)
    fde = candidates(tokens, documents, queries, depth)
    sys.stdout.write(f"{name}: {len(documents):,} documents, {len(queries)} queries, exact nDCG@10 {exact.mean():.4f}\n")

    # The estimate as an index makes it: the first documents of the write
    start = time.perf_counter()
    sample = fidelity.Sample(documents[: fidelity.DOCUMENTS])
    chosen, tried = fidelity.choose(sample, target)
    choose = time.perf_counter() - start
    encode = json.load(open(os.path.join(OUTPUT, "tokens", name, "meta.json"), encoding="utf-8")).get("encode_s")
    sys.stdout.write(f"  chosen for {target}: {fidelity.name(chosen)} in {choose:.1f} s (encoding took {encode} s)\n")

    lines, clusters = [], {}
    for rung in fidelity.order(list(fidelity.LADDER) + (list(EXTRA) if rungs == "all" else []), documents[0].shape[1]):
        estimate = next((x for r, x in tried if r == rung), None) or fidelity.measure(sample, rung, clusters)
        tokenstore = store(documents, rung)
        alone = perquery(rerank(tokenstore, queries, [np.asarray(x[:100]) for x in reference]))
        rankings = rerank(tokenstore, queries, fde)
        pipeline = perquery(rankings)
        line = {
            "dataset": name,
            "dims": documents[0].shape[1],
            "documents": len(documents),
            "queries": len(queries),
            "settings": fidelity.name(rung),
            "chosen": rung == chosen,
            "estimate": round(estimate["ndcg"], 4),
            "estimate overlap": round(estimate["overlap"], 4),
            "estimate s": round(estimate["seconds"], 2),
            "tokens ratio": round(alone.mean() / exact.mean(), 4),
            "pipeline ratio": round(pipeline.mean() / exact.mean(), 4),
            "pipeline interval": bootstrap(exact, pipeline),
            "real agreement": round(graded(reference, rankings), 4),
            "real overlap": round(float(np.mean([len(set(a[:10].tolist()) & set(b[:10].tolist())) / 10 for a, b in zip(reference, rankings)])), 4),
            "token bytes": round(tokenstore.nbytes / len(documents)),
            "bytes": round(tokenstore.nbytes / len(documents) + 2048),
            "choose s": round(choose, 1),
            "encode s": encode,
        }
        lines.append(line)
        with open(output, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        sys.stdout.write(f"  {json.dumps(line)}\n")
        sys.stdout.flush()

    return lines


class Projected:
    """
    A token cache whose documents were projected: the ids, qrels and offsets of the cache, the projected rows as its tokens.
    """

    def __init__(self, tokens, documents):
        self.name, self.docids, self.queryids, self.qrels = tokens.name, tokens.docids, tokens.queryids, tokens.qrels
        self.offsets, self.tokens = tokens.offsets, np.concatenate(documents)


def report(path, target):
    """
    The last line of each (dataset, settings) in a JSON lines file, with the rung the target chooses marked: the first of the
    ladder, in its order, whose estimate reaches the target.
    """

    # pylint: disable=C0415
    from txtai_muvera.core import fidelity

    latest = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = json.loads(line)
            latest[line["dataset"], line["settings"]] = line

    datasets = list(dict.fromkeys(x[0] for x in latest))
    ladder = [fidelity.name(x) for x in fidelity.order(fidelity.LADDER, 384)]
    lines = []
    for dataset in datasets:
        rows = sorted((x for (name, _), x in latest.items() if name == dataset), key=lambda x: x["bytes"])
        chosen = next((name for name in ladder if any(x["settings"] == name and x["estimate"] >= target for x in rows)), None)
        lines.extend({**x, "chosen": x["settings"] == chosen} for x in rows)

    return lines


def table(lines):
    """
    Markdown table of the JSON lines.
    """

    rows = [
        "| dataset | settings | B/doc | estimate | real-query agreement | tokens ratio | pipeline ratio (95% interval) | top-10 kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in lines:
        mark = " **(chosen)**" if x["chosen"] else ""
        low, high = x["pipeline interval"]
        rows.append(
            f"| {x['dataset']} | {x['settings']}{mark} | {x['bytes']:,} | {x['estimate']:.3f} | {x['real agreement']:.3f} | "
            f"{x['tokens ratio']:.3f} | {x['pipeline ratio']:.3f} ({low:.3f}-{high:.3f}) | {x['real overlap']:.3f} |"
        )
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--data", default=DATA, help="folder holding the BEIR datasets")
    parser.add_argument("--datasets", default="scifact,msmarco-dl19-5k,dbpedia-5k")
    parser.add_argument("--queries", type=int, default=None, help="keep the first N judged queries")
    parser.add_argument("--target", type=float, default=None, help="fidelity target (default: the compact preset's)")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--output", default=os.path.join(OUTPUT, "fidelity.jsonl"))
    parser.add_argument("--report", action="store_true", help="only print the table of the output file, chosen rungs marked for the target")
    parser.add_argument("--dims", type=int, default=None, help="project the token vectors to this many dims first (128: a ColBERT checkpoint's width)")
    parser.add_argument("--rungs", choices=["all", "ladder"], default="all", help="the ladder and extra settings, or the ladder only")
    args = parser.parse_args()

    # pylint: disable=C0415
    import torch

    from txtai_muvera.core import schema

    torch.set_num_threads(2)
    target = args.target or schema.PRESETS["compact"]["fidelity"]
    if args.report:
        print(table(report(args.output, target)))
        return

    lines = []
    for name in args.datasets.split(","):
        lines.extend(run(name, args.data, args.queries, target, args.candidates, args.output, args.dims, args.rungs))

    print(table(lines))


if __name__ == "__main__":
    main()
