"""
End-to-end indexing throughput against stock txtai, same texts, same run: Embeddings(path=colbert) (txtai 9.14's late-interaction
path: LatePooling + its MUVERA dense vectors) and Embeddings(sparse={"path": colbert, ...}) after `import txtai_muvera` with each
encoder setting, on the first N SciFact documents (title + text) with the stand-in model.

    python benchmarks/indexing.py [--documents 1000] [--rounds 2] [--threads 2] [--presets compact,exact]

Systems are timed in turn in each round (best round kept per system), so load from other processes hits all alike. Prints one
JSON line per system with docs/s and the ratio to stock txtai.
"""

import argparse
import json
import os
import time

import torch

from txtai import Embeddings

import txtai_muvera  # noqa: F401 pylint: disable=W0611

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "beir", "scifact")
MODEL = os.path.join(HERE, "output", "standin")


def systems(model, presets):
    """
    Embeddings configs by system name.

    Args:
        model: checkpoint folder
        presets: txtai_muvera presets to time

    Returns:
        dict name -> Embeddings keyword arguments
    """

    configs = {"txtai": {"path": model, "content": True}}
    for preset in presets:
        for half in (False, True):
            name = f"txtai_muvera-{preset}" + ("-half" if half else "")
            configs[name] = {"sparse": {"path": model, "preset": preset, "vectors": {"half": half}}, "content": True}

    return configs


def main():
    """
    Runs the benchmark.
    """

    parser = argparse.ArgumentParser(description="End-to-end indexing docs/s against stock txtai")
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", default="compact,exact")
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    with open(os.path.join(DATA, "corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line) for _, line in zip(range(args.documents), f)]
    rows = [(row["_id"], f"{row['title']} {row['text']}".strip(), None) for row in corpus]

    configs = systems(args.model, args.presets.split(","))
    best, load = {}, os.getloadavg()
    for _ in range(args.rounds):
        for name, config in configs.items():
            embeddings = Embeddings(**config)
            embeddings.index(rows[:32])
            start = time.perf_counter()
            embeddings.index(rows)
            best[name] = max(best.get(name, 0.0), len(rows) / (time.perf_counter() - start))
            embeddings.close()

    load = [round(x, 2) for x in load + os.getloadavg()]
    for name, rate in best.items():
        result = {"system": name, "documents": len(rows), "docs_per_s": round(rate, 1), "ratio_vs_txtai": round(rate / best["txtai"], 3)}
        print(json.dumps({**result, "threads": args.threads, "rounds": args.rounds, "loadavg_before_after": load}), flush=True)


if __name__ == "__main__":
    main()
