"""
MaxSim module
"""

import numpy as np
import torch

# Score given to a document without any token: sorts after every real score and is dropped by txtai's score <= 0 filter
EMPTY = float("-inf")

# Token rows widened and multiplied at a time when scoring float16 / int8 tokens (measured fastest on CPU)
BLOCK = 1024


def maxsim(queries, documents, device=None):
    """
    Computes exact MaxSim scores between ragged query and document token matrices.

    The score of a query against a document is the best dot product of each query token over the document's tokens,
    averaged over the query's tokens (txtai LateEncoder scale, in [-1, 1] for L2-normalised tokens). Multiply by the
    number of query tokens to get PyLate's sum scale: the ranking is the same.

    Documents with no tokens score EMPTY (-inf). Queries with no tokens score 0.0 against every document with tokens.

    Args:
        queries: list of (q_i, d) arrays or tensors, or one 2-D array for a single query
        documents: list of (t_j, d) arrays or tensors
        device: torch device to compute on, defaults to CPU

    Returns:
        float32 array (len(queries), len(documents))
    """

    queries = [queries] if _ismatrix(queries) else list(queries)
    documents = list(documents)

    scores = np.empty((len(queries), len(documents)), dtype=np.float32)
    if not documents:
        return scores

    # Store documents flat once, then score each query with the flat kernel
    dimension = _tensor(queries[0] if queries else documents[0]).shape[-1]
    documents = [_tensor(x).reshape(-1, dimension).float() for x in documents]
    lengths = np.array([x.shape[0] for x in documents], dtype=np.int64)
    offsets = np.zeros(len(documents) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    tokens = torch.cat(documents).to(device) if device is not None else torch.cat(documents)

    for x, query in enumerate(queries):
        scores[x] = maxsim_flat(query, tokens, offsets, device=device)

    return scores


def maxsim_flat(query, tokens, offsets, scale=None, device=None):
    """
    Computes exact MaxSim scores of one query against documents stored flat.

    This is the fast path: one matrix product of all document tokens with the query tokens, a segment max over each
    document's rows, then a mean over the query tokens. float16 and int8 tokens are scored exactly as stored: they are
    converted to float32 exactly and int8 rows are multiplied by their scale (value = int8 * scale).

    Documents with no tokens score EMPTY (-inf). A query with no tokens scores 0.0 against every document with tokens.

    Args:
        query: (q, d) array or tensor
        tokens: (T, d) float32, float16 or int8 array or tensor, or a codecs.Codes block, the rows of all documents one after
                another
        offsets: (n + 1,) int64 row boundaries, document i has rows offsets[i]:offsets[i + 1]
        scale: (T,) float32 per row scale for int8 tokens, None otherwise
        device: torch device to compute on, defaults to CPU

    Returns:
        float32 array (n,)
    """

    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or not offsets.size:
        raise ValueError(f"offsets must be a non-empty 1-D array of row boundaries, got shape {offsets.shape}")

    # Codes blocks (Codec.flat with decode False) are scored by their codec, a block of rows at a time, on the CPU
    codes = hasattr(tokens, "similarities")
    tokens, query = tokens if codes else _tensor(tokens), _tensor(query).float()
    if query.ndim != 2 or tokens.ndim != 2 or query.shape[1] != tokens.shape[1]:
        raise ValueError(f"query must be (q, d) and tokens (T, d) with the same d, got {tuple(query.shape)} and {tuple(tokens.shape)}")
    if offsets[0] != 0 or offsets[-1] != tokens.shape[0] or np.any(np.diff(offsets) < 0):
        raise ValueError(f"offsets must rise from 0 to the number of token rows ({tokens.shape[0]}), got {offsets[0]}..{offsets[-1]}")
    if not codes and tokens.dtype == torch.int8 and scale is None:
        raise ValueError("int8 tokens need a per row float32 scale")

    if not torch.isfinite(query).all():
        raise ValueError("query tokens hold NaN or infinity")

    n, lengths = len(offsets) - 1, np.diff(offsets)
    if query.shape[0] == 0:
        return np.where(lengths > 0, 0.0, EMPTY).astype(np.float32)

    if device is not None:
        query = query.to(device)
        tokens = tokens if codes else tokens.to(device)

    # (T, q) similarities: int8 scale factors out of the dot product, so it is applied to the result rows
    scores = similarities(tokens, query)
    if scale is not None:
        scores *= _tensor(scale).to(scores.device, torch.float32)[:, None]

    # A NaN or infinite token value (or scale) makes its row's dot products with a finite query NaN or infinite: checking the
    # (T, q) similarities costs 1/d of the product and catches every such row. Their sum (one pass) is finite whenever they all
    # are; when it is not, the rows are looked for (a sum of large finite values can overflow: then none is found)
    if not torch.isfinite(scores.sum()):
        rows = torch.nonzero(~torch.isfinite(scores).all(dim=1)).flatten().cpu().numpy()
        if len(rows):
            documents = np.unique(np.searchsorted(offsets, rows, side="right") - 1)
            raise ValueError(f"document tokens hold NaN or infinity: {len(documents)} documents, first positions {documents[:10].tolist()}")

    # Segment max on CPU: numpy's reduceat over each document's contiguous columns of the (q, T) scores, about 10x faster
    # than scattering into a padded buffer. Documents without tokens have no columns: they keep EMPTY.
    if scores.device.type == "cpu":
        best = np.full((n, scores.shape[1]), EMPTY, dtype=np.float32)
        nonempty = lengths > 0
        if nonempty.any():
            best[nonempty] = np.maximum.reduceat(scores.T.contiguous().numpy(), offsets[:-1][nonempty], axis=1).T
        return best.mean(axis=1).astype(np.float32, copy=False)

    # Elsewhere: scatter rows into a (n, maxlen, q) buffer pre-filled with -inf
    maxlen = int(lengths.max()) if n else 0
    if n and maxlen and np.all(lengths == maxlen):
        best = scores.view(n, maxlen, -1).amax(dim=1)
    elif maxlen:
        rows = np.arange(offsets[-1], dtype=np.int64) + np.repeat(np.arange(n, dtype=np.int64) * maxlen - offsets[:-1], lengths)
        padded = torch.full((n * maxlen, scores.shape[1]), EMPTY, dtype=scores.dtype, device=scores.device)
        padded.index_copy_(0, torch.from_numpy(rows).to(scores.device), scores)
        best = padded.view(n, maxlen, -1).amax(dim=1)
    else:
        best = torch.full((n, scores.shape[1]), EMPTY, dtype=scores.dtype, device=scores.device)

    return best.mean(dim=1).cpu().numpy().astype(np.float32, copy=False)


def similarities(tokens, query):
    """
    Dot products of every token row with every query token. Rows stored as float16 or int8 are widened to float32 (exactly)
    a block at a time, so each block is multiplied while it is still in cache instead of widening the whole gather first;
    a Codes block is scored by its codec, likewise a block at a time, on the CPU.

    Args:
        tokens: (T, d) tensor, float32, float16 or int8, or a codecs.Codes block
        query: (q, d) float32 tensor

    Returns:
        (T, q) float32 tensor
    """

    if hasattr(tokens, "similarities"):
        return tokens.similarities(query.cpu()).to(query.device)

    if tokens.dtype == torch.float32:
        return tokens @ query.T

    scores = torch.empty((tokens.shape[0], query.shape[0]), dtype=torch.float32, device=tokens.device)
    for start in range(0, tokens.shape[0], BLOCK):
        torch.matmul(tokens[start : start + BLOCK].float(), query.T, out=scores[start : start + BLOCK])

    return scores


def maxsim_padded(queries, qmask, documents, dmask, device=None):
    """
    Computes exact MaxSim scores over padded, masked token batches.

    Padded document tokens are filled with the dtype's minimum before the max and padded query tokens are left out of
    the mean, as txtai's LateEncoder.score does. Documents without any real token score EMPTY (-inf), queries without
    any real token score 0.0.

    Args:
        queries: (Q, q, d) array or tensor
        qmask: (Q, q) bool mask, True for real query tokens
        documents: (N, t, d) array or tensor
        dmask: (N, t) bool mask, True for real document tokens
        device: torch device to compute on, defaults to CPU

    Returns:
        float32 array (Q, N)
    """

    queries, documents = _tensor(queries).float(), _tensor(documents).float()
    qmask, dmask = _tensor(qmask).bool(), _tensor(dmask).bool()
    if queries.ndim != 3 or documents.ndim != 3 or queries.shape[2] != documents.shape[2]:
        raise ValueError(f"queries must be (Q, q, d) and documents (N, t, d), got {tuple(queries.shape)} and {tuple(documents.shape)}")
    if qmask.shape != queries.shape[:2] or dmask.shape != documents.shape[:2]:
        raise ValueError(f"masks must match (Q, q) {tuple(queries.shape[:2])} and (N, t) {tuple(documents.shape[:2])}")

    if not torch.isfinite(queries[qmask]).all() or not torch.isfinite(documents[dmask]).all():
        raise ValueError("query or document tokens hold NaN or infinity")

    if device is not None:
        queries, qmask, documents, dmask = queries.to(device), qmask.to(device), documents.to(device), dmask.to(device)

    # Max over real document tokens, one query at a time to bound memory at (N, q, t)
    results = []
    for query, mask in zip(queries, qmask):
        scores = torch.einsum("sh,bth->bst", query, documents)
        scores = scores.masked_fill(~dmask[:, None, :], torch.finfo(scores.dtype).min).amax(dim=-1)

        # Mean over real query tokens
        scores = scores.masked_fill(~mask[None, :], 0).sum(dim=-1) / mask.sum().clamp(min=1)
        results.append(scores.masked_fill(~dmask.any(dim=1), EMPTY))

    if not results:
        return np.empty((0, documents.shape[0]), dtype=np.float32)

    return torch.stack(results).cpu().numpy().astype(np.float32, copy=False)


def topk(scores, k):
    """
    Selects the top k entries of each row, best first. Ties keep the lower index first.

    Args:
        scores: (n,) or (rows, n) array
        k: number of entries to keep, clipped to the row length

    Returns:
        (indices, scores), int64 and scores dtype, shaped (k,) or (rows, k) like the input
    """

    scores = np.asarray(scores)
    if scores.ndim not in (1, 2):
        raise ValueError(f"scores must be 1-D or 2-D, got shape {scores.shape}")
    if int(k) < 0:
        raise ValueError(f"k must be >= 0, got {k}")

    rows = scores.reshape(1, -1) if scores.ndim == 1 else scores
    k = min(int(k), rows.shape[1])

    # Stable sort on negated scores keeps lower indices first among ties
    indices = np.argsort(-rows, axis=1, kind="stable")[:, :k].astype(np.int64)
    values = np.take_along_axis(rows, indices, axis=1)

    return (indices[0], values[0]) if scores.ndim == 1 else (indices, values)


def rerank(documents_ids, queries_embeddings, documents_embeddings, device=None):
    """
    Re-ranks candidate documents per query, a drop-in for PyLate's rank.rerank.

    Inputs and outputs follow PyLate: one list of candidate ids and one list of token matrices per query, numpy arrays,
    torch tensors or nested lists; a single 2-D query is taken as one query. Scores are on PyLate's scale: the SUM over
    query tokens of each token's best match (colbert_scores), not the mean used elsewhere in this package.

    One difference from PyLate: PyLate pads candidates with zero rows and does not mask them, so a shorter candidate's
    per token max is clipped at 0. Here padding is masked, the score is exact MaxSim. The two agree whenever every query
    token has a non-negative best match. Ties keep the candidate order.

    Args:
        documents_ids: list (per query) of lists of candidate ids
        queries_embeddings: list of (q, d) query matrices, or a (Q, q, d) / (q, d) array or tensor
        documents_embeddings: list (per query) of lists of (t, d) candidate matrices
        device: torch device to compute on, defaults to CPU

    Returns:
        list (per query) of [{"id": id, "score": float}, ...] sorted by score descending
    """

    queries_embeddings = [queries_embeddings] if _ismatrix(queries_embeddings) else queries_embeddings

    results = []
    for query, ids, candidates in zip(queries_embeddings, documents_ids, documents_embeddings):
        query = _tensor(query).float()
        candidates = [_tensor(x).float().reshape(-1, query.shape[-1]) for x in candidates]
        if not candidates:
            results.append([])
            continue

        # PyLate scale: sum over query tokens = mean * number of query tokens
        scores = maxsim([query], candidates, device=device)[0] * query.shape[0]
        indices, scores = topk(scores, len(candidates))
        results.append([{"id": ids[i], "score": float(s)} for i, s in zip(indices.tolist(), scores.tolist())])

    return results


def _ismatrix(x):
    """
    Checks if x is a single 2-D matrix (one query) rather than a collection of matrices.

    Args:
        x: input

    Returns:
        True if x is a 2-D array or tensor
    """

    return isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 2


def _tensor(x):
    """
    Converts x to a torch tensor, without copying numpy arrays where possible.

    Args:
        x: array, tensor or nested list

    Returns:
        torch.Tensor
    """

    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        # torch.from_numpy needs a writeable, native byte order array: memory-mapped read-only arrays are copied
        if not x.flags.writeable or not x.dtype.isnative:
            x = np.array(x, dtype=x.dtype.newbyteorder("=") if not x.dtype.isnative else x.dtype)
        return torch.from_numpy(x)

    return torch.as_tensor(np.asarray(x, dtype=np.float32))
