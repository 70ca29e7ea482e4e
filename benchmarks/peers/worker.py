"""
Peer benchmark worker: one library in one process, driven by peers.py over stdin/stdout (one JSON object per line each way).

    python worker.py ours      # txtai-muvera, in this repository's virtual environment
    python worker.py pylate    # PyLate (PLAID, Voyager), in benchmarks/peers/.venv

Both sides take the same inputs: the token matrices that benchmarks/footprint.py cached for a dataset (documents float16, queries
float32) for building, and the query texts, encoded by each side's own model, for searching. Every time is measured inside this
process, around the library call only, as wall time and as CPU time of the whole process (all its threads), which depends less on
what else the machine runs. Requests:

    {"op": "encode", "texts": [...], "kind": "query" | "data", "out": "file.npz"}   each side's own encoding, saved flat
    {"op": "build", "tokens": folder, "index": folder, "system": {...}}            build an index from cached tokens, save it
    {"op": "load", "index": folder, "system": {...}}                                load a saved index and the model
    {"op": "search", "text": "...", "k": 10}                                        one query: ids, encode and search ms
    {"op": "quit"}

Library output (progress bars, logs) goes to stderr: stdout carries replies only.
"""

import json
import os
import resource
import sys
import time

import numpy as np

# Same thread budget on both sides: set before torch, faiss or fast-plaid start their pools
THREADS = os.environ.get("PEERS_THREADS", "2")
for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(name, THREADS)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rss():
    """
    Returns:
        (current RSS MB, peak RSS MB) of this process
    """

    with open("/proc/self/statm", encoding="utf-8") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    return round(current, 1), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def matrices(folder, dtype="float32"):
    """
    Cached document token matrices of a dataset, as an encoder returns them (float32) or as cached (float16, half the memory).

    Args:
        folder: benchmarks/output/tokens/<dataset>
        dtype: float32 or float16

    Returns:
        list of (tokens, dim) arrays
    """

    tokens = np.load(os.path.join(folder, "documents.npy"), mmap_mode="r")
    offsets = np.load(os.path.join(folder, "offsets.npy"))
    return [np.array(tokens[a:b], dtype=dtype) for a, b in zip(offsets[:-1], offsets[1:])]


def disk(folder):
    """
    Returns:
        bytes of every file under folder
    """

    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def save(path, arrays):
    """
    Saves a list of matrices flat: tokens float32 and offsets.
    """

    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in arrays])
    np.savez(path, tokens=np.concatenate(arrays).astype(np.float32), offsets=offsets)


class Cached:
    """
    Encoder stand-in for building from cached tokens: a document's text is its position in the cache.
    """

    def __init__(self, documents):
        self.documents, self.truncated = documents, 0

    def encode(self, texts, kind):
        return [self.documents[int(x)] for x in texts]


class Timed:
    """
    Encoder proxy that records the time of the last encode call, so search time can be told from encoding time.
    """

    def __init__(self, encoder):
        self.encoder, self.seconds, self.cpu = encoder, 0.0, 0.0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, texts, kind):
        start, cpu = time.perf_counter(), time.process_time()
        result = self.encoder.encode(texts, kind)
        self.seconds, self.cpu = time.perf_counter() - start, time.process_time() - cpu
        return result


class Ours:
    """
    txtai-muvera through its txtai scoring class with the package defaults (the default preset unless the system sets one).
    """

    def __init__(self, model):
        # A committed copy of the package (peers.py --commit) or the installed one
        if os.environ.get("PEERS_SOURCE"):
            sys.path.insert(0, os.environ["PEERS_SOURCE"])

        # pylint: disable=C0415
        import torch

        torch.set_num_threads(int(THREADS))
        self.model, self.scoring = model, None

    def create(self, system):
        # pylint: disable=C0415
        from txtai_muvera.glue.scoring import MuveraScoring

        config = {"path": self.model, **system.get("config", {})}
        return MuveraScoring(config)

    def encode(self, texts, kind):
        # pylint: disable=C0415
        from txtai_muvera import ColBERT

        return ColBERT(self.model).encode(texts, "query" if kind == "query" else "data")

    def build(self, documents, index, system):
        scoring = self.create(system)
        scoring.encoder = Cached(documents)

        start = time.perf_counter()
        scoring.index([(x, str(x), None) for x in range(len(documents))])
        scoring.save(index)
        seconds = time.perf_counter() - start

        with open(os.path.join(index, "config.json"), "w", encoding="utf-8") as f:
            json.dump(scoring.config, f, default=str)

        settings = {key: scoring.config.get(key) for key in ("preset", "tokens", "pool", "candidates", "muvera", "ann", "residual", "fidelity")}
        estimate = scoring.config.get("estimate") or {}
        settings["estimate"] = {key: estimate.get(key) for key in ("fidelity", "settings", "seconds", "documents", "queries")} if estimate else None
        return seconds, settings

    def load(self, index, system):
        # pylint: disable=C0415
        from txtai_muvera.glue.scoring import MuveraScoring

        with open(os.path.join(index, "config.json"), encoding="utf-8") as f:
            config = json.load(f)

        self.scoring = MuveraScoring(config)
        self.scoring.load(index)
        self.scoring.encoder = Timed(self.scoring.encoder)
        self.options = system.get("search", {})

    def search(self, text, k):
        # pylint: disable=C0415
        from txtai_muvera import SearchOptions

        start, cpu = time.perf_counter(), time.process_time()
        with self.scoring.searching(SearchOptions(**self.options)):
            results = self.scoring.batchsearch([text], k)[0]
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
        encoder = self.scoring.encoder
        return [int(uid) for uid, _ in results], (encoder.seconds, total - encoder.seconds), (encoder.cpu, cpu - encoder.cpu)


class PyLate:
    """
    PyLate 1.6: PLAID (fast-plaid backend) or Voyager with PyLate's ColBERT re-ranking, PyLate's defaults unless the system sets
    options.
    """

    def __init__(self, model):
        # pylint: disable=C0415
        import torch

        torch.set_num_threads(int(THREADS))
        self.path, self.model, self.index, self.retriever = model, None, None, None

    def colbert(self):
        # pylint: disable=C0415
        from pylate import models

        if self.model is None:
            self.model = models.ColBERT(self.path, device="cpu")
        return self.model

    def encode(self, texts, kind):
        return self.colbert().encode(texts, is_query=kind == "query", batch_size=32, convert_to_numpy=True, show_progress_bar=False)

    def create(self, index, system, override):
        # pylint: disable=C0415
        from pylate import indexes

        # Search settings of both indexes are constructor arguments (n_full_scores, n_ivf_probe, ef_search)
        folder, name = os.path.split(os.path.normpath(index))
        options = {**system.get("config", {}), **({} if override else system.get("search", {}))}
        options.pop("k_token", None)
        if system["library"] == "plaid":
            return indexes.PLAID(index_folder=folder, index_name=name, override=override, device="cpu", show_progress=False, **options)

        return indexes.Voyager(index_folder=folder, index_name=name, override=override, embedding_size=options.pop("embedding_size", 384), **options)

    def build(self, documents, index, system):
        start = time.perf_counter()
        self.create(index, system, True).add_documents(documents_ids=list(range(len(documents))), documents_embeddings=documents)
        return time.perf_counter() - start, system.get("config", {})

    def load(self, index, system):
        # pylint: disable=C0415
        from pylate import retrieve

        self.index = self.create(index, system, False)
        self.retriever = retrieve.ColBERT(index=self.index)
        self.search_options = {key: value for key, value in system.get("search", {}).items() if key == "k_token"}
        self.colbert()

    def search(self, text, k):
        start, cpu = time.perf_counter(), time.process_time()
        query = self.encode([text], "query")
        encode, encodecpu = time.perf_counter() - start, time.process_time() - cpu

        start, cpu = time.perf_counter(), time.process_time()
        results = self.retriever.retrieve(queries_embeddings=query, k=k, device="cpu", **self.search_options)[0]
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return [int(x["id"]) for x in results], (encode, seconds), (encodecpu, cpu)


def main():
    """
    Serves requests until quit or end of input.
    """

    side, model = sys.argv[1], sys.argv[2]

    # Replies go to the original stdout; everything else written to fd 1 (libraries, native code) goes to stderr
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    library = Ours(model) if side == "ours" else PyLate(model)
    reply = {"op": "ready", "rss_mb": rss()}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()

    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "quit":
            break

        if op == "encode":
            save(request["out"], [np.asarray(x, dtype=np.float32) for x in library.encode(request["texts"], request["kind"])])
            reply = {}
        elif op == "build":
            documents = matrices(request["tokens"], request.get("dtype", "float32"))
            before, cpu = rss(), time.process_time()
            seconds, settings = library.build(documents, request["index"], request["system"])
            cpu = time.process_time() - cpu
            reply = {"build_s": round(seconds, 3), "build_cpu_s": round(cpu, 3), "bytes": disk(request["index"]), "documents": len(documents), "inputs_rss_mb": before,
                     "settings": settings}
        elif op == "load":
            start = time.perf_counter()
            library.load(request["index"], request["system"])
            reply = {"load_s": round(time.perf_counter() - start, 3)}
        else:
            ids, (encode, seconds), (encodecpu, cpu) = library.search(request["text"], request.get("k", 10))
            reply = {"ids": ids, "encode_ms": round(encode * 1000, 3), "search_ms": round(seconds * 1000, 3), "encode_cpu_ms": round(encodecpu * 1000, 3),
                     "search_cpu_ms": round(cpu * 1000, 3)}

        reply["op"], reply["rss_mb"] = op, rss()
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
