"""
LateVectors module: txtai vectors model that encodes text with a late-interaction checkpoint and MUVERA
"""

import numpy as np

from safetensors import SafetensorError
from txtai.vectors import Vectors

from .batch import Encoded, Queries
from ..core.models import ColBERT
from ..core.models.checkpoint import SETTINGS
from ..core.models.hub import CheckpointError
from ..core.muvera import Muvera


class LateVectors(Vectors):
    """
    Vectors model for txtai's sparse scoring. Documents become MUVERA FDEs plus their token matrices (kept for exact MaxSim
    re-ranking); queries become FDEs that carry their token matrices through txtai's scoring to the index backend.

    Configuration (a txtai scoring config): `path` (checkpoint), `vectors` (ColBERT options), `muvera` (Muvera options).
    """

    def __init__(self, config, scoring, models):
        super().__init__(config, scoring, models)

        # Scores are MaxSim-scaled by the index backend: txtai's Sparse scoring must not rescale them
        self.isnormalize = True

        # Fixed dimensional encoder, built from the saved settings when the index is reloaded
        self.encoder = Muvera(**self.config.get("muvera", {})) if self.config else None

    def loadmodel(self, path):
        # txtai passes the model options of every vectors model under "vectors"
        try:
            model = ColBERT(path, **self.config.get("vectors", {}))
        except CheckpointError:
            raise
        except (RuntimeError, OSError, SafetensorError) as error:
            # Weights that do not match their config fail deep inside transformers or safetensors: name the checkpoint
            raise ValueError(f"Cannot load checkpoint at {path}: {type(error).__name__}: {str(error)[:500]}") from error

        checkheads(model, path)

        # A saved index must be searched with the model that built it: the checkpoint at path may have changed since
        fingerprint = self.config.get("fingerprint") if self.config else None
        if fingerprint and fingerprint != model.fingerprint:
            raise ValueError(
                f"Checkpoint at {path} has fingerprint {model.fingerprint!r} but this index was built with {fingerprint!r}: "
                "load the index with the checkpoint that built it, or rebuild the index"
            )

        return model

    def encode(self, data, category=None):
        return self.encoder(self.model.encode(data, self.category(category)), self.category(category))

    def batchtransform(self, documents, category=None):
        """
        Encodes documents (default: queries) into FDEs that carry their token matrices.

        Args:
            documents: iterable of (id, data, tags)
            category: "query" (default) or "data"

        Returns:
            Queries array: FDE rows with a `tokens` attribute holding the token matrices
        """

        category = self.category(category)
        texts = [self.prepare(data, category) for _, data, _ in documents]
        tokens = self.model.encode(texts, category)
        return Queries(self.encoder(tokens, category), tokens)

    def vectors(self, documents, batchsize=500, checkpoint=None, buffer=None, dtype=None):
        """
        Encodes a stream of documents. txtai's Sparse scoring runs this in a background thread fed by a bounded queue, so an
        exception here would never reach the caller and could block the producer. Errors are therefore captured, the stream is
        drained and the error travels inside the result to the index backend, which raises it in the caller's thread.

        Args:
            documents: iterable of (id, text, tags)
            batchsize: documents per encoding batch
            checkpoint: unused, token matrices are not checkpointed
            buffer: unused
            dtype: unused

        Returns:
            (ids, dimensions, Encoded)
        """

        encoded = Encoded(self.settings(), self.config.get("tokens", "float16"))
        ids, batch = [], []
        try:
            for document in documents:
                encoded.streamed += 1
                batch.append(document)
                if len(batch) == batchsize:
                    ids.extend(self.batch(batch, encoded))
                    batch = []

            if batch:
                ids.extend(self.batch(batch, encoded))

        # pylint: disable=W0718
        except Exception as error:
            # Drain the stream so the producer never blocks on a full queue, then hand the error over. txtai has counted
            # every streamed document into its index ids, so the backend must skip the same number of ids.
            for _ in documents:
                encoded.streamed += 1

            encoded.error = error

        dimensions = self.encoder.dimensions(self.model.dim)
        return (ids, dimensions, encoded if ids or encoded.error else None)

    # pylint: disable=W0221
    def batch(self, documents, encoded):
        """
        Encodes one batch of documents into `encoded`.

        Args:
            documents: list of (id, text, tags)
            encoded: Encoded accumulator

        Returns:
            ids of the batch
        """

        texts = [self.prepare(data, "data") for _, data, _ in documents]
        for (uid, _, _), text in zip(documents, texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"Document {uid!r} has {type(text).__name__} text {shorten(text)}, expected str (None documents are dropped by txtai)"
                )

        tokens = self.model.encode(texts, "data")
        encoded.add(self.encoder(tokens, "data"), tokens, self.model.truncated)
        return [uid for uid, _, _ in documents]

    def dot(self, queries, data):
        return np.dot(np.asarray(queries), np.asarray(data).T).tolist()

    def settings(self):
        """
        Resolved settings of this model, written back into the index configuration.

        Returns:
            dict with resolved "vectors" (model) and "muvera" settings and the model fingerprint
        """

        # Only settings the ColBERT constructor takes, so the saved config rebuilds the same encoder
        vectors = {key: value for key, value in self.model.settings.items() if key in SETTINGS}
        vectors["compatible"] = self.model.compatible

        return {"vectors": vectors, "muvera": self.encoder.config, "fingerprint": self.model.fingerprint, "dim": self.model.dim}

    def category(self, category):
        """
        Maps txtai categories to the encoder's: documents are "data", everything else is a query.

        Args:
            category: txtai category

        Returns:
            "data" or "query"
        """

        return "data" if category == "data" else "query"


def checkheads(model, path):
    """
    Checks that the projection heads of a loaded checkpoint chain from the backbone's hidden size, so that a checkpoint with
    mismatched dimensions fails at load with a message naming them instead of deep inside torch at the first encoding.

    Args:
        model: ColBERT
        path: checkpoint path, for the message
    """

    size = int(model.model.config.hidden_size)
    for x, (weight, _, residual, _) in enumerate(model.heads):
        if weight.ndim != 2 or weight.shape[1] != size or (residual is not None and tuple(residual.shape) != tuple(weight.shape)):
            raise ValueError(
                f"Checkpoint at {path} has projection head {x} with weight shape {tuple(weight.shape)}, "
                f"expected (dim, {size}) to follow a layer of size {size}"
            )
        size = int(weight.shape[0])


def shorten(value, length=40):
    """
    Short printable form of a value for error messages.

    Args:
        value: any value
        length: maximum characters

    Returns:
        str
    """

    text = repr(value)
    return text if len(text) <= length else f"{text[:length]}..."
