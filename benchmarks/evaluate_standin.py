"""
Stand-in quality runs: the all-MiniLM-L6-v2 stand-in checkpoint on the BEIR folders in ../shared/data/beir, through
txtai_muvera.evaluation (indexing with Embeddings(sparse=...), the three modes, ranx metrics), MUVERA 20/5/16 with fill off and on.

Usage:
    python benchmarks/evaluate_standin.py [--data ../shared/data/beir] [--datasets scifact,msmarco-dl19-5k,dbpedia-5k] [--fill false,true]

Writes benchmarks/output/standin-<fill>.jsonl and prints the tables. Built indexes are cached in benchmarks/output/cache.
"""

import argparse
import importlib.util
import os
import sys

from txtai_muvera.evaluation import evaluate

# Benchmark folder and outputs
ROOT = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(ROOT, "output")


def standin(path):
    """
    Builds the stand-in checkpoint when missing: txtai_muvera.standin when the package has it, else benchmarks/standin.py.

    Args:
        path: checkpoint folder

    Returns:
        path
    """

    if os.path.isfile(os.path.join(path, "1_Dense", "config.json")):
        return path

    try:
        # pylint: disable=C0415
        from txtai_muvera.standin import build_standin
    except ImportError:
        spec = importlib.util.spec_from_file_location("standin", os.path.join(ROOT, "standin.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        build_standin = module.build_standin

    return build_standin(path)


def main():
    """
    Runs the stand-in evaluation.
    """

    parser = argparse.ArgumentParser(description="Stand-in quality runs on BEIR-layout folders")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "..", "shared", "data", "beir"))
    parser.add_argument("--datasets", default="scifact,msmarco-dl19-5k,dbpedia-5k")
    parser.add_argument("--fill", default="false,true", help="fill settings to run, comma separated")
    parser.add_argument("--model", default=os.path.join(OUTPUT, "standin"))
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    model = standin(args.model)
    folders = [os.path.join(args.data, name) for name in args.datasets.split(",")]
    for fill in [x.strip().lower() == "true" for x in args.fill.split(",")]:
        # Full MaxSim does not depend on MUVERA settings: run it once, with fill off
        modes = ("muvera", "rerank") if fill else ("maxsim", "rerank", "muvera")
        report = evaluate(
            folders,
            model,
            modes=modes,
            muvera={"repetitions": 20, "hashes": 5, "projection": 16, "seed": 42, "fill": fill},
            candidates=args.candidates,
            tokens="float16",
            ann={"index": "flat"},
            vectors={"threads": args.threads, "batch": 32},
            cache=os.path.join(OUTPUT, "cache"),
        )

        output = os.path.join(OUTPUT, f"standin-fill-{str(fill).lower()}.jsonl")
        with open(output, "w", encoding="utf-8") as f:
            f.write(report.jsonl())

        sys.stdout.write(f"\n## MUVERA 20/5/16 fill={fill}, candidates={args.candidates}, exact FDE search\n\n{report.table('rows', digits=4)}\n")
        for row in report.rows:
            sys.stdout.write(f"{row['dataset']} {row['mode']}: {row['seconds']:.1f} s for {row['queries']} queries, indexing {row['indexing']} s\n")
        sys.stdout.write(f"JSON lines: {output}\n")


if __name__ == "__main__":
    main()
