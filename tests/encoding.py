"""
Texts and comparisons shared by the encoder path tests (ONNX, int8, bfloat16 against float32 PyTorch)
"""

import numpy as np

DOCUMENTS = [
    "the retrieval model encodes every query and document into token vectors",
    "search engines rank passages for questions about science, and the answers",
    "a",
    "  Compact vectors for a LARGE collection of documents: late interaction keeps one vector per token. " * 6,
    "health finance sports music history travel food weather",
]

QUERIES = ["music and travel", "maximum similarity of token vectors?", "questions about science"]


def cosines(actual, expected):
    """
    Per token cosine similarities between two lists of L2-normalised token matrices with the same shapes.
    """

    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == np.float32
        assert a.shape == e.shape, (a.shape, e.shape)
        assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)

    return np.concatenate([(a * e).sum(axis=1) for a, e in zip(actual, expected)])
