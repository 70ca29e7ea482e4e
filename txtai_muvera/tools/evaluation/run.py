"""
Run module
"""

import hashlib
import json
import os
import time

import numpy as np
import torch

from txtai import Embeddings

from ...core.maxsim import maxsim_flat, topk
from ...glue.pipeline import Reranker, backend
from .metrics import DEPTH

# Evaluation modes: exact MaxSim over the whole corpus, MUVERA candidates re-ranked by exact MaxSim, MUVERA alone
MODES = ("maxsim", "rerank", "muvera")


class Run:
    """
    Indexes a BEIR dataset through txtai (`Embeddings(sparse=...)` with this package registered) and retrieves every judged query in
    three modes:

      - maxsim: exact MaxSim of each query against every document, brute force over the index's token store in chunks of documents
      - rerank: MUVERA FDE candidates re-ranked by exact MaxSim (the package's default search)
      - muvera: MUVERA FDE inner products alone

    Built indexes can be cached in a folder, keyed by everything that shapes them, so reruns skip encoding.
    """

    def __init__(self, path, muvera=None, candidates=100, tokens="float16", ann=None, vectors=None, cache=None, chunk=512, preset="exact"):
        """
        Creates a run.

        Args:
            path: late-interaction checkpoint (folder or hub id)
            muvera: Muvera settings (repetitions, hashes, projection, seed, fill, final)
            candidates: FDE candidates re-ranked per query in rerank mode
            tokens: token storage dtype
            preset: named defaults for the settings not given (default exact: 0.1.0's settings, the quality tables of docs/benchmarks.md)
            ann: FDE index settings (index, quantize, hnsw, ivf, pq)
            vectors: ColBERT options (batch, threads, lengths, prefixes)
            cache: folder holding built indexes, None to always build
            chunk: documents scored at once by the exact maxsim mode (bounds memory)
        """

        if not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 1:
            raise ValueError(f"candidates must be a positive integer, got {candidates!r}")
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ValueError(f"chunk must be a positive integer, got {chunk!r}")

        self.path, self.candidates, self.cache, self.chunk = str(path), candidates, cache, chunk
        self.config = {"path": self.path, "preset": preset, "muvera": dict(muvera or {}), "tokens": tokens, "ann": dict(ann or {}), "vectors": dict(vectors or {})}

        # Resolved index settings of the last index() call
        self.settings = None

        # Seconds spent encoding and indexing by the last index() call that built an index, None when loaded from the cache
        self.indexing = None

    def __call__(self, dataset, modes=MODES, limit=DEPTH):
        """
        Indexes a dataset and retrieves its queries in each mode.

        Args:
            dataset: BEIR dataset
            modes: modes to run, from MODES
            limit: results per query

        Returns:
            dict of mode -> {"run": {query id: [document ids, best first]}, "seconds": query seconds}
        """

        unknown = [x for x in modes if x not in MODES]
        if unknown or not modes:
            raise ValueError(f"Unknown or no mode(s) {list(modes)}, accepted: {list(MODES)}")

        embeddings = self.index(dataset)
        try:
            return {mode: self.search(embeddings, dataset, mode, limit) for mode in modes}
        finally:
            embeddings.close()

    def index(self, dataset):
        """
        Builds (or loads from the cache) the index of a dataset.

        Args:
            dataset: BEIR dataset

        Returns:
            Embeddings
        """

        # Importing this package (the parent of this module) registered it with txtai, so sparse= builds a txtai_muvera index
        folder = os.path.join(self.cache, self.key(dataset)) if self.cache else None
        if folder and os.path.isfile(os.path.join(folder, "config.json")):
            embeddings = Embeddings()
            embeddings.load(folder)
            self.indexing = None
        else:
            embeddings = Embeddings(sparse=json.loads(json.dumps(self.config)))
            start = time.perf_counter()
            embeddings.index(dataset.documents())
            self.indexing = time.perf_counter() - start
            if folder:
                embeddings.save(folder)

        self.check(embeddings, dataset)

        # Resolved settings, as the index wrote them into its config
        config = backend(embeddings).config
        self.settings = {key: config.get(key) for key in ("muvera", "ann", "tokens", "fingerprint")}

        return embeddings

    def search(self, embeddings, dataset, mode, limit=DEPTH):
        """
        Retrieves every query of a dataset in one mode.

        Args:
            embeddings: Embeddings from index()
            dataset: BEIR dataset
            mode: maxsim, rerank or muvera
            limit: results per query

        Returns:
            {"run": {query id: [document ids]}, "seconds": query seconds}
        """

        uids, texts = list(dataset.queries), list(dataset.queries.values())
        start = time.perf_counter()
        if mode == "maxsim":
            docids = list(dataset.corpus)
            results = [[docids[x] for x in ids] for ids, _ in self.exact(embeddings, texts, limit)]
        else:
            results = Reranker(embeddings)(texts, limit=limit, candidates=self.candidates, rerank=mode == "rerank") if texts else []
            results = [[uid for uid, _ in result] for result in results]

        return {"run": dict(zip(uids, results)), "seconds": time.perf_counter() - start}

    def exact(self, embeddings, texts, limit=DEPTH):
        """
        Exact MaxSim search over the whole corpus: the queries are encoded by the index's own vectors model and scored against every
        stored token matrix, a chunk of documents at a time, keeping a running top `limit` per query. Ties keep the lower index id.

        Args:
            embeddings: Embeddings from index()
            texts: query texts
            limit: results per query

        Returns:
            list of (index ids, scores) per query, best first
        """

        store = backend(embeddings).store
        queries = embeddings.scoring.encoder.encode(list(texts), "query") if texts else []
        queries = [torch.from_numpy(np.asarray(query, dtype=np.float32)) for query in queries]

        best = [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)) for _ in queries]
        ids = store.ids
        for start in range(0, len(ids), self.chunk):
            chunk = ids[start : start + self.chunk]
            tokens, offsets, scale = store.gather(chunk)

            # Convert the chunk once for all queries: float32, int8 rows times their scale
            tokens = torch.from_numpy(np.asarray(tokens, dtype=np.float32))
            if scale is not None:
                tokens *= torch.from_numpy(np.asarray(scale, dtype=np.float32))[:, None]

            for x, query in enumerate(queries):
                scores = np.concatenate([best[x][1], maxsim_flat(query, tokens, offsets)])
                candidates = np.concatenate([best[x][0], chunk])
                indices, values = topk(scores, limit)
                best[x] = (candidates[indices], values)

        return best

    def check(self, embeddings, dataset):
        """
        Checks that index ids are corpus positions, as the exact mode maps them back to document ids by position.

        Args:
            embeddings: Embeddings
            dataset: BEIR dataset
        """

        store = backend(embeddings).store
        if len(store) != len(dataset.corpus) or not np.array_equal(store.ids, np.arange(len(dataset.corpus))):
            raise ValueError(
                f"Index of {dataset.name} holds {len(store)} token matrices with ids that are not corpus positions 0..{len(dataset.corpus) - 1}"
            )

    def key(self, dataset):
        """
        Cache key of a dataset's index: the index settings, the model files and the documents.

        Args:
            dataset: BEIR dataset

        Returns:
            folder name
        """

        digest = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode("utf-8"))

        # Local checkpoints: file names, sizes and times, so a rebuilt model gets a new key
        if os.path.isdir(self.path):
            for root, _, files in sorted(os.walk(self.path)):
                for name in sorted(files):
                    stat = os.stat(os.path.join(root, name))
                    digest.update(f"{os.path.relpath(os.path.join(root, name), self.path)}:{stat.st_size}:{stat.st_mtime_ns}".encode("utf-8"))

        for uid, text in dataset.corpus.items():
            digest.update(uid.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")

        return f"{dataset.name}-{digest.hexdigest()[:16]}"


def evaluate(folders, path, modes=MODES, metrics=None, split="test", maxqueries=None, maxdocs=None, report=None, **options):
    """
    Evaluates a checkpoint on BEIR-layout folders: indexes each one through txtai and scores every mode with ranx.

    Args:
        folders: list of BEIR-layout folders
        path: late-interaction checkpoint
        modes: modes to run, from MODES
        metrics: metric names, defaults to the card's metric set
        split: qrels split
        maxqueries: judged queries kept per dataset (quick runs)
        maxdocs: documents kept per dataset, judged documents first (quick runs)
        report: Report to add rows to, defaults to a new one
        options: Run options (muvera, candidates, tokens, ann, vectors, cache, chunk)

    Returns:
        Report
    """

    # pylint: disable=C0415
    from .beir import BEIR
    from .metrics import Metrics
    from .report import Report

    metrics = Metrics(metrics)
    report = report if report is not None else Report(metrics.metrics)
    run = Run(path, **options)
    for folder in folders:
        dataset = BEIR.load(folder, split, maxqueries, maxdocs)
        results = run(dataset, modes)
        for mode, result in results.items():
            report.add(
                dataset.name,
                mode,
                metrics(dataset.qrels, result["run"]),
                queries=len(dataset.queries),
                documents=len(dataset.corpus),
                candidates=run.candidates if mode == "rerank" else None,
                seconds=round(result["seconds"], 3),
                indexing=round(run.indexing, 3) if run.indexing is not None else None,
                model=str(path),
                **run.settings,
            )

    return report
