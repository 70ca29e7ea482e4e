"""
Metrics module
"""

import importlib.util
import warnings

import numpy as np

# ranx is an optional dependency, imported on first use (it compiles its metrics with numba)
RANX = importlib.util.find_spec("ranx") is not None

# The card's metric set, in report order: our name -> ranx name
METRICS = {
    **{f"accuracy@{k}": f"hit_rate@{k}" for k in (1, 3, 5, 10)},
    **{f"precision@{k}": f"precision@{k}" for k in (1, 3, 5, 10)},
    **{f"recall@{k}": f"recall@{k}" for k in (1, 3, 5, 10)},
    "ndcg@10": "ndcg@10",
    "mrr@10": "mrr@10",
    "map@100": "map@100",
    "recall@100": "recall@100",
}

# Results each mode must return per query for the deepest metric
DEPTH = 100


class Metrics:
    """
    Information retrieval metrics computed with ranx (trec_eval definitions: nDCG with linear gain, relevant = score > 0).

    Every query in the qrels counts; a query without results, or judged with zeros only, scores 0. Runs are ranked lists: ranx
    sorts by score, so each list is handed over with strictly decreasing scores derived from its rank, and the order the
    retriever chose (ties included) is the order evaluated.
    """

    def __init__(self, metrics=None):
        """
        Creates a metrics evaluator.

        Args:
            metrics: list of metric names from METRICS, defaults to all
        """

        if not RANX:
            raise ImportError('Evaluation metrics need ranx: pip install "txtai-muvera[evaluation]"')

        metrics = list(METRICS) if metrics is None else list(metrics)
        unknown = [x for x in metrics if x not in METRICS]
        if unknown:
            raise ValueError(f"Unknown metric(s) {unknown}, accepted: {list(METRICS)}")

        self.metrics = metrics

    def __call__(self, qrels, run, mean=True):
        """
        Evaluates a run.

        Args:
            qrels: dict of query id -> {document id: int relevance}
            run: dict of query id -> ranked list of document ids, best first (queries not in qrels are ignored)
            mean: if True, returns the mean over queries, otherwise one value per query in qrels order

        Returns:
            dict of metric name -> float (mean) or numpy array (per query)
        """

        # pylint: disable=C0415
        from ranx import Qrels, Run, evaluate

        queries = list(qrels)
        if not queries:
            raise ValueError("qrels holds no query: nothing to evaluate")

        # ranx needs at least one judgment per query and one result per run list: empty lists are left out, then
        # made comparable (missing queries score 0)
        judged = {uid: {docid: int(score) for docid, score in qrels[uid].items()} for uid in queries if qrels[uid]}
        ranked = {
            uid: {docid: float(len(ranking) - x) for x, docid in enumerate(dict.fromkeys(ranking))}
            for uid, ranking in run.items()
            if uid in judged and len(ranking)
        }

        # Placeholder judgment/result so ranx has something to hold: a query id that no result matches
        if not ranked:
            ranked = {queries[0]: {"\0none": 1.0}}

        with warnings.catch_warnings():
            # numba warns about an internal unsigned cast in ranx's hit rate
            warnings.simplefilter("ignore")
            run = Run.from_dict(ranked)
            evaluate(Qrels.from_dict(judged), run, [METRICS[x] for x in self.metrics], return_mean=False, make_comparable=True)

        # ranx keeps per-query scores by query id in the run
        results = {}
        for name in self.metrics:
            scores = run.scores[METRICS[name]]
            values = np.array([float(scores[uid]) if uid in scores else 0.0 for uid in queries], dtype=np.float64)
            results[name] = float(values.mean()) if mean else values

        return results
