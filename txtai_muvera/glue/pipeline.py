"""
Reranker module: exact MaxSim re-ranking pipeline over stored token matrices, with per-call knobs
"""

from contextlib import nullcontext

from txtai.pipeline import Pipeline

from ..core.options import SearchOptions
from .scoring import MuveraScoring


class Reranker(Pipeline):
    """
    Searches an embeddings index built with this package and re-ranks the FDE candidates by exact MaxSim over the token
    matrices stored at index time. No candidate is re-encoded: only the query goes through this package's encoder. Use it in
    place of txtai's `Reranker(embeddings, similarity)`, or in YAML by class path (`txtai_muvera.Reranker`, with `application:`
    so it finds the application's index).
    """

    def __init__(self, embeddings=None, application=None, candidates=None, efsearch=None, nprobe=None):
        """
        Creates a Reranker.

        Args:
            embeddings: Embeddings instance whose sparse index was built by txtai-muvera
            application: txtai Application, used for its embeddings when embeddings is not given (YAML form)
            candidates: default FDE candidates per query
            efsearch: default HNSW search depth
            nprobe: default IVF cells probed
        """

        self.embeddings, self.application = embeddings, application
        self.defaults = {"candidates": candidates, "efsearch": efsearch, "nprobe": nprobe}

    # pylint: disable=W0222
    def __call__(self, query, limit=3, candidates=None, efsearch=None, nprobe=None, rerank=True, **kwargs):
        """
        Runs a search with exact MaxSim re-ranking.

        Args:
            query: query text (or txtai SQL) or a list of them
            limit: maximum results
            candidates: FDE candidates re-ranked per query (overrides the index setting for this call)
            efsearch: HNSW search depth for this call
            nprobe: IVF cells probed for this call
            rerank: False returns MUVERA-only results
            kwargs: further arguments for Embeddings.batchsearch (weights, index, parameters)

        Returns:
            txtai search results, one list per query (a single list for a single query)
        """

        calls = {"candidates": candidates, "efsearch": efsearch, "nprobe": nprobe}
        options = {key: self.defaults[key] if value is None else value for key, value in calls.items()}
        queries = [query] if isinstance(query, str) else list(query)

        # An application serialises searches with its writes (txtai's database is not thread-safe for writes)
        with self.application.lock if self.application else nullcontext():
            embeddings = self.embeddings if self.embeddings is not None else self.application.embeddings if self.application else None
            scoring = backend(embeddings)
            with scoring.searching(SearchOptions(rerank=rerank, **options)):
                results = embeddings.batchsearch(queries, limit, **kwargs)

        return results[0] if isinstance(query, str) else results


def backend(embeddings):
    """
    Finds the txtai-muvera index backend of an embeddings instance.

    Args:
        embeddings: Embeddings instance

    Returns:
        MuveraScoring
    """

    scoring = getattr(embeddings, "scoring", None)
    if not isinstance(scoring, MuveraScoring):
        raise ValueError(
            "Reranker needs an Embeddings index built by txtai-muvera: Embeddings(sparse=<late-interaction checkpoint>) "
            f"after `import txtai_muvera`; this one has scoring {type(scoring).__name__}"
        )

    return scoring
