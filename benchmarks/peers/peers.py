"""
Peers: txtai-muvera against PyLate (PLAID through fast-plaid, and Voyager) on the same model, the same documents and the same
token matrices.

Runs in this repository's virtual environment and drives one worker process per library and phase (worker.py): PyLate's
workers run in their own virtual environment (benchmarks/peers/.venv, see README.md there), since PyLate cannot be installed
beside txtai 9.14. Per dataset:

  1. token parity: both libraries encode the same documents and queries with the stand-in checkpoint; max abs difference;
  2. build: each system indexes the token matrices cached by benchmarks/footprint.py (encoding done once, before any timer) in a
     fresh process and saves the index; build seconds, bytes on disk per document, peak RSS;
  3. search: every system loads its saved index and the model in a fresh process; the judged queries go to every system one
     query at a time, interleaved (the order rotates from query to query) so that load from other jobs hits all alike; each
     side times its own query encoding and its own search; nDCG@10 with ranx over every judged query.

    python benchmarks/peers/peers.py --datasets scifact,wordnet-200k       # default systems
    python benchmarks/peers/peers.py --report                              # docs/peers.md and docs/peers.png from the results

Writes one JSON line per dataset and system to benchmarks/output/peers.jsonl.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUTPUT = os.path.join(ROOT, "benchmarks", "output")
DATA = os.path.join(ROOT, "..", "shared", "data", "beir")
DOCS = os.path.join(ROOT, "docs")
PEER = os.path.join(HERE, ".venv", "bin", "python")

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# Systems: side (ours or pylate), library, build options (config), search options (search). Systems with the same "index"
# share one build. txtai-muvera runs with the package defaults (its default preset) unless a system names other settings.
SYSTEMS = {
    "txtai-muvera": {"side": "ours", "library": "txtai-muvera"},
    "txtai-muvera 300 candidates": {"side": "ours", "library": "txtai-muvera", "index": "txtai-muvera", "search": {"candidates": 300}},
    "txtai-muvera small": {"side": "ours", "library": "txtai-muvera", "config": {"preset": "small"}},
    "PLAID": {"side": "pylate", "library": "plaid"},
    "PLAID 1024 full scores": {"side": "pylate", "library": "plaid", "index": "PLAID", "search": {"n_full_scores": 1024}},
    "PLAID nbits 2": {"side": "pylate", "library": "plaid", "config": {"nbits": 2}},
    "Voyager": {"side": "pylate", "library": "voyager"},
}

DEFAULT = ["txtai-muvera", "txtai-muvera 300 candidates", "txtai-muvera small", "PLAID", "PLAID 1024 full scores"]


class Worker:
    """
    A worker process (worker.py) and its line protocol.
    """

    # Source folder of txtai_muvera for our side (None: the installed package, i.e. this working tree)
    source = None

    def __init__(self, side, model, python):
        command = [python, os.path.join(HERE, "worker.py"), side, model]
        env = {**os.environ, "PEERS_SOURCE": Worker.source} if Worker.source else None
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.ready = self.read()

    def __call__(self, **request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.read()

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args[2]} exited with {self.process.wait()}")
        return json.loads(line)

    def close(self):
        self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.process.stdin.flush()
        self.process.wait()


def log(text):
    sys.stderr.write(f"[{datetime.datetime.now():%H:%M:%S}] {text}\n")
    sys.stderr.flush()


def percentiles(values):
    values = np.asarray(values)
    return {"p50": round(float(np.percentile(values, 50)), 2), "p95": round(float(np.percentile(values, 95)), 2)}


def texts(data, tokens):
    """
    Document and query texts of a dataset in the order of its token cache.

    Returns:
        (documents, queries)
    """

    # pylint: disable=C0415
    from txtai_muvera.tools.evaluation import BEIR

    dataset = BEIR.load(data)
    return [dataset.corpus[x] for x in tokens.docids], [dataset.queries[x] for x in tokens.queryids]


def parity(documents, queries, model, python, count):
    """
    Encodes a spread sample of documents and queries with both libraries and compares the token matrices.

    Returns:
        dict
    """

    step = max(1, len(documents) // count)
    sample = {"data": documents[::step][:count], "query": queries[: max(1, count // 3)]}
    result = {}
    with tempfile.TemporaryDirectory(dir=OUTPUT) as folder:
        for side, executable in (("ours", sys.executable), ("pylate", python)):
            worker = Worker(side, model, executable)
            for kind, items in sample.items():
                worker(op="encode", texts=items, kind=kind, out=os.path.join(folder, f"{side}-{kind}.npz"))
            worker.close()

        for kind, items in sample.items():
            ours, theirs = (np.load(os.path.join(folder, f"{side}-{kind}.npz")) for side in ("ours", "pylate"))
            rows = bool(np.array_equal(ours["offsets"], theirs["offsets"]))
            diff = float(np.abs(ours["tokens"] - theirs["tokens"]).max()) if rows else None
            result[kind] = {"texts": len(items), "tokens": int(ours["offsets"][-1]), "rows_match": rows, "max_abs_diff": diff}

    return result


def build(name, system, tokens, index, model, python):
    """
    Builds one system's index from the cached token matrices in a fresh worker.

    Returns:
        dict
    """

    worker = Worker(system["side"], model, sys.executable if system["side"] == "ours" else python)
    reply = worker(op="build", tokens=tokens, index=index, system=system)
    worker.close()
    log(f"{name}: built in {reply['build_s']:.1f} s ({reply['build_cpu_s']:.1f} CPU s), {reply['bytes'] / reply['documents']:,.0f} B/doc, peak RSS {reply['rss_mb'][1]:,.0f} MB")
    return {
        "build_s": reply["build_s"],
        "build_cpu_s": reply["build_cpu_s"],
        "bytes_per_doc": round(reply["bytes"] / reply["documents"], 1),
        "bytes": reply["bytes"],
        "build_peak_rss_mb": reply["rss_mb"][1],
        "build_inputs_rss_mb": reply["inputs_rss_mb"][0],
        "settings": reply["settings"],
        "files": files(index),
    }


def files(folder):
    """
    Bytes per saved file, by path relative to the index folder.
    """

    return {
        os.path.relpath(os.path.join(root, name), folder): os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(folder)
        for name in names
    }


def search(names, systems, indexes, queries, model, python, warmup=5):
    """
    Loads every system in its own worker and runs the queries one at a time, interleaved across systems.

    Returns:
        dict of name -> {ids, encode_ms, search_ms, load_s, rss}
    """

    workers, results = {}, {}
    for name in names:
        system = systems[name]
        worker = Worker(system["side"], model, sys.executable if system["side"] == "ours" else python)
        loaded = worker(op="load", index=indexes[name], system=system)
        workers[name] = worker
        results[name] = {"ids": [], "encode_ms": [], "search_ms": [], "encode_cpu_ms": [], "search_cpu_ms": [], "load_s": loaded["load_s"], "import_rss_mb": worker.ready["rss_mb"][0],
                         "loaded_rss_mb": loaded["rss_mb"][0]}

    for text in queries[:warmup]:
        for name in names:
            workers[name](op="search", text=text, k=10)

    start = time.time()
    for x, text in enumerate(queries):
        order = names[x % len(names):] + names[: x % len(names)]
        for name in order:
            reply = workers[name](op="search", text=text, k=10)
            results[name]["ids"].append(reply["ids"])
            for key in ("encode_ms", "search_ms", "encode_cpu_ms", "search_cpu_ms"):
                results[name][key].append(reply[key])
        if x and x % 100 == 0:
            log(f"{x} of {len(queries)} queries, {time.time() - start:.0f} s")

    for name in names:
        results[name]["search_peak_rss_mb"] = workers[name](op="search", text=queries[0], k=10)["rss_mb"][1]
        workers[name].close()

    return results


def ndcg(ids, tokens):
    """
    nDCG@10 of ranked document positions over every judged query.
    """

    # pylint: disable=C0415
    from txtai_muvera.tools.evaluation.metrics import Metrics

    run = {qid: [tokens.docids[x] for x in ranked] for qid, ranked in zip(tokens.queryids, ids)}
    return round(float(Metrics(["ndcg@10"])(tokens.qrels, run)["ndcg@10"]), 4)


def checkout(commit):
    """
    Extracts txtai_muvera as of a commit into benchmarks/output/peers/source-<commit>, so that our side runs committed code
    whatever the working tree holds.

    Returns:
        (folder, full commit hash)
    """

    full = subprocess.run(["git", "rev-parse", commit], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    folder = os.path.join(OUTPUT, "peers", f"source-{full[:12]}")
    if not os.path.isdir(folder):
        os.makedirs(folder + ".tmp", exist_ok=True)
        archive = subprocess.run(["git", "archive", full, "txtai_muvera"], capture_output=True, cwd=ROOT, check=True).stdout
        subprocess.run(["tar", "-x", "-C", folder + ".tmp"], input=archive, check=True)
        os.rename(folder + ".tmp", folder)

    return folder, full


def versions(python, commit=None):
    """
    Library versions on both sides and the commit measured.
    """

    # pylint: disable=C0415
    import importlib.metadata

    ours = {x: importlib.metadata.version(x) for x in ("txtai-muvera", "txtai", "torch", "faiss-cpu")}
    code = "import importlib.metadata as m, json; print(json.dumps({x: m.version(x) for x in ('pylate', 'fast-plaid', 'voyager', 'torch')}))"
    theirs = json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)
    if not commit:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "txtai_muvera"], capture_output=True, text=True, cwd=ROOT, check=False).stdout.strip()
        commit += " + uncommitted changes" if dirty else ""

    return {"ours": ours, "pylate": theirs, "commit": commit, "python": platform.python_version()}


def run(args):
    """
    Runs parity, builds and interleaved searches for every dataset, appending results to args.output.
    """

    # pylint: disable=C0415
    import footprint

    names = args.systems.split(",")
    unknown = [x for x in names if x not in SYSTEMS]
    if unknown:
        raise ValueError(f"Unknown systems {unknown}, accepted: {list(SYSTEMS)}")

    commit = None
    if args.commit:
        Worker.source, commit = checkout(args.commit)
        commit = commit[:12]

    meta = versions(args.python, commit)
    log(f"measuring commit {meta['commit']}: {meta}")
    for dataset in args.datasets.split(","):
        data = os.path.join(args.data, dataset)
        tokens = footprint.load(data, args.model)
        folder = os.path.join(OUTPUT, "tokens", dataset)
        documents, queries = texts(data, tokens)
        if args.queries:
            tokens.queryids, queries = tokens.queryids[: args.queries], queries[: args.queries]
            tokens.qrels = {x: tokens.qrels[x] for x in tokens.queryids}

        same = parity(documents, queries, args.model, args.python, args.parity) if args.parity else None
        if same:
            log(f"{dataset}: token parity {same}")

        indexes, builds = {}, {}
        root = os.path.join(OUTPUT, "peers", dataset)
        os.makedirs(root, exist_ok=True)
        for name in names:
            key = SYSTEMS[name].get("index", name)
            indexes[name] = os.path.join(root, key.replace(" ", "-"))
            if key not in builds:
                builds[key] = build(key, SYSTEMS[key], folder, indexes[name], args.model, args.python)

        results = search(names, SYSTEMS, indexes, queries, args.model, args.python)
        with open(args.output, "a", encoding="utf-8") as f:
            for name in names:
                result = results[name]
                line = {
                    "dataset": dataset,
                    "system": name,
                    "library": SYSTEMS[name]["library"],
                    "documents": len(documents),
                    "queries": len(queries),
                    "ndcg@10": ndcg(result["ids"], tokens),
                    **builds[SYSTEMS[name].get("index", name)],
                    "search_ms": percentiles(result["search_ms"]),
                    "encode_ms": percentiles(result["encode_ms"]),
                    "total_ms": percentiles(np.add(result["search_ms"], result["encode_ms"])),
                    "search_cpu_ms": percentiles(result["search_cpu_ms"]),
                    "encode_cpu_ms": percentiles(result["encode_cpu_ms"]),
                    "load_s": result["load_s"],
                    "import_rss_mb": result["import_rss_mb"],
                    "loaded_rss_mb": result["loaded_rss_mb"],
                    "search_peak_rss_mb": result["search_peak_rss_mb"],
                    "search": SYSTEMS[name].get("search", {}),
                    "parity": same,
                    "threads": int(os.environ.get("PEERS_THREADS", "2")),
                    "loadavg": round(os.getloadavg()[0], 2),
                    "date": f"{datetime.date.today()}",
                    **meta,
                }
                f.write(json.dumps(line) + "\n")
                log(f"{dataset} {name}: nDCG@10 {line['ndcg@10']}, search p50/p95 {line['search_ms']}, {line['bytes_per_doc']:,.0f} B/doc")


def main():
    parser = argparse.ArgumentParser(description="txtai-muvera against PyLate PLAID and Voyager")
    parser.add_argument("--data", default=DATA, help="folder holding the BEIR datasets")
    parser.add_argument("--datasets", default="scifact,wordnet-200k")
    parser.add_argument("--systems", default=",".join(DEFAULT), help=f"comma separated, from: {', '.join(SYSTEMS)}")
    parser.add_argument("--model", default=os.path.join(OUTPUT, "standin"), help="checkpoint (default: the stand-in)")
    parser.add_argument("--python", default=PEER, help="python of the PyLate virtual environment")
    parser.add_argument("--queries", type=int, default=None, help="first N judged queries only (default: all)")
    parser.add_argument("--parity", type=int, default=300, help="documents encoded by both libraries for the parity check (0: skip)")
    parser.add_argument("--commit", default=None, help="run our side from this commit's txtai_muvera (default: the working tree)")
    parser.add_argument("--output", default=os.path.join(OUTPUT, "peers.jsonl"))
    parser.add_argument("--report", action="store_true", help="only write docs/peers.md and docs/peers.png from --output")
    args = parser.parse_args()

    if not args.report:
        run(args)


if __name__ == "__main__":
    main()
