"""
Codecs module: how token rows are stored (plain floats, int8, residual or product quantization codes) and decoded for MaxSim
"""

import logging

import numpy as np
import torch

# Codes are decoded and multiplied a block of rows at a time, the block the MaxSim kernel widens float16 / int8 rows by
from .maxsim import BLOCK

# Token rows per block when scoring packed codes (accumulate): few, large torch operations. With 2 threads and passive OpenMP
# waits (a shared machine), 1,024-row blocks made each operation wait on thread wake-ups: 34 / 51 / 113 ms against 10 / 10 / 17 ms
# for 16,384 rows on 22k x 96 / 70k x 64 / 88k x 40 bytes of codes; with spinning waits both took 4-11 ms
ROWS = 16384

# Token rows bucketed at a time when encoding residuals: the block's residuals and comparison masks stay in cache (1,024 and
# 2,048 rows of 128 dims ran 2.5 x faster than one pass over 65,536 rows per cutoff, 4,096 rows 1.8 x)
BUCKETS = 2048

logger = logging.getLogger(__name__)

# Fewest training rows for a residual state kept for good (Codec.enough, Codec.trusted): 39 x 16, where Residual's sizing rule
# reaches 16 centroids of >= 39 rows each. Measured with the stand-in (384-dim tokens, 2 bits), training on the first n tokens
# of a first write and reconstructing later documents' tokens, mean cosine on SciFact: 3 rows 0.50, 39 0.88, 156 0.91,
# 312 0.925, 624 0.927, 1,248 0.930, 9,984 0.937, 19,968 0.940; on WordNet glosses: 3 rows 0.32, 39 0.90, 312 0.90, 624 0.926,
# 1,248 0.927, 19,968 0.938. From 624 rows on the curve is flat (within 0.012 of 19,968 rows); below it, it is steep or uneven.
# Rows stored under an untrusted state are re-encoded from their decoded values when it is retrained (their float values are
# gone), so a lower threshold also keeps their number small
RESIDUAL = 39 * 16


class Codec:
    """
    Turns float32 token rows into fixed-width codes and back. Codes are a dict of named parts, each an array with one row per
    token: `parts()` names them with their dtype and row shape, and the token store keeps, gathers and saves each part as is.

    A codec that needs training (`trained` False) learns its state (centroids, codebooks) from a sample of the corpus tokens.
    The state is kept when documents are added later: stored codes stay valid and nothing is re-encoded (see Residual), unless
    it learned from fewer than `enough` rows (`trusted` False): the storage engine then retrains it once the index holds enough
    tokens, and re-encodes the few documents stored until then.

    Adding a codec is a new subclass plus one line in CODECS.
    """

    # Codec name (key in CODECS), option defaults and whether maxsim_flat scores the parts directly (no decode)
    name, defaults, native = None, {}, False

    # Fewest training rows for a state that is kept for good (see trusted): fixed codecs learn nothing
    enough = 0

    def __init__(self, dim, **options):
        """
        Creates a codec.

        Args:
            dim: token dimension
            options: codec options, see the subclass's defaults
        """

        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")

        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            accepted = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"Unknown option {unknown[0]!r} for codec {self.name!r}, accepted: {accepted}")

        self.dim, self.options = int(dim), {**self.defaults, **options}

        # Rows the trained state learned from, None when unknown (fixed codecs, states saved before it was recorded)
        self.sample = None

    @property
    def trained(self):
        """
        Returns:
            True when the codec can encode
        """

        return True

    @property
    def trusted(self):
        """
        Whether the trained state learned from enough rows to be kept for good. A state trained on fewer than `enough` rows (a
        tiny first write) is retrained by the write after which the index holds `enough` tokens. States saved without the
        count (older indexes) are trusted.

        Returns:
            bool
        """

        return self.sample is None or self.sample >= self.enough

    def train(self, sample):
        """
        Learns the codec state from a sample of token rows. Fixed codecs need nothing.

        Args:
            sample: float32 (n, dim) token rows
        """

    def parts(self):
        """
        Returns:
            {part name: (dtype name, row shape)} of the codes
        """

        raise NotImplementedError

    def encode(self, rows):
        """
        Encodes token rows.

        Args:
            rows: float32 (n, dim), finite

        Returns:
            {part name: array (n, *row shape)}
        """

        raise NotImplementedError

    def decode(self, codes):
        """
        Decodes a block of codes, vectorised over all its rows.

        Args:
            codes: {part name: array (n, *row shape)}

        Returns:
            float32 (n, dim)
        """

        raise NotImplementedError

    def flat(self, codes, decode=True):
        """
        What a gather hands to maxsim_flat: float32 / float16 / int8 rows as stored (int8 with its scales); other codecs decode
        to float32, or with decode False stay codes in a Codes block that maxsim_flat scores through similarities().

        Args:
            codes: {part name: array (n, *row shape)}
            decode: decode codes that are not scored as stored

        Returns:
            (tokens (n, dim) array or Codes, scale (n,) float32 or None)
        """

        return (self.decode(codes) if decode else Codes(self, codes)), None

    def similarities(self, codes, query):
        """
        Dot products of every code row with every query token, as decode(codes) @ query.T, decoding a block of rows at a time so
        the whole gather is never widened to float32 at once. Codecs with a cheaper exact form (Residual) override it.

        Args:
            codes: {part name: array (n, *row shape)}
            query: float32 (q, dim) tensor

        Returns:
            float32 (n, q) tensor
        """

        count = len(next(iter(codes.values())))
        scores = torch.empty((count, query.shape[0]), dtype=torch.float32)
        for start in range(0, count, BLOCK):
            block = self.decode({name: part[start : start + BLOCK] for name, part in codes.items()})
            torch.matmul(torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)), query.T, out=scores[start : start + BLOCK])

        return scores

    @property
    def config(self):
        """
        Returns:
            JSON-able dict: the codec name, its resolved options and, for an untrusted state, the rows it learned from ("sample")
        """

        # The count is written only when it marks the state untrusted: configs of trusted states stay readable by versions
        # that do not know the key
        return {"name": self.name, **self.options, **({} if self.trusted else {"sample": self.sample})}

    def state(self):
        """
        Returns:
            {name: array} learned state, saved next to the codes (empty for fixed codecs)
        """

        return {}

    def restore(self, state):
        """
        Restores a learned state saved with state(), checking shapes and values.

        Args:
            state: {name: array}
        """

    @property
    def bytes(self):
        """
        Returns:
            bytes per stored token row
        """

        return sum(np.dtype(dtype).itemsize * int(np.prod(shape)) for dtype, shape in self.parts().values())

    def checksample(self, sample, minimum=1):
        """
        Checks a training sample.

        Args:
            sample: array-like (n, dim)
            minimum: fewest rows accepted

        Returns:
            float32 (n, dim) array
        """

        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if sample.ndim != 2 or sample.shape[1] != self.dim:
            raise ValueError(f"Training sample for codec {self.name!r} has shape {sample.shape}, expected (rows, {self.dim})")
        if len(sample) < minimum:
            raise ValueError(f"Codec {self.name!r} needs at least {minimum} training token rows, got {len(sample)}")
        if not np.isfinite(sample).all():
            raise ValueError(f"Training sample for codec {self.name!r} contains NaN or infinite values")

        return sample

    def checkstate(self, state, shapes):
        """
        Checks state arrays against their expected shapes and converts them to float32.

        Args:
            state: {name: array}
            shapes: {name: expected shape}

        Returns:
            {name: float32 array}
        """

        arrays = {}
        for name, shape in shapes.items():
            if name not in state:
                raise ValueError(f"Codec {self.name!r} state is missing {name!r}")
            array = np.ascontiguousarray(state[name], dtype=np.float32)
            if array.shape != tuple(shape) or not np.isfinite(array).all():
                raise ValueError(f"Codec {self.name!r} state {name!r} has shape {array.shape}, expected {tuple(shape)} with finite values")
            arrays[name] = array

        return arrays


class Float(Codec):
    """
    Plain floating point rows, scored as stored by maxsim_flat.
    """

    native, dtype = True, None

    def parts(self):
        return {"tokens": (self.dtype, (self.dim,))}

    def encode(self, rows):
        # Values beyond float16's range become inf: the store rejects them, naming the ids
        with np.errstate(over="ignore"):
            return {"tokens": rows.astype(self.dtype)}

    def decode(self, codes):
        return codes["tokens"].astype(np.float32)

    def flat(self, codes, decode=True):
        return codes["tokens"], None


class Float32(Float):
    """
    float32 rows: 4 bytes per value, exact.
    """

    name = dtype = "float32"


class Float16(Float):
    """
    float16 rows: 2 bytes per value.
    """

    name = dtype = "float16"


class Int8(Codec):
    """
    int8 rows with a float32 scale per row: scale = max|x| / 127 (1 for zero rows), q = round(x / scale), value = q * scale.
    """

    name, native = "int8", True

    def parts(self):
        return {"tokens": ("int8", (self.dim,)), "scale": ("float32", ())}

    def encode(self, rows):
        scale = (np.abs(rows).max(axis=1) / 127).astype(np.float32) if len(rows) else np.zeros(0, np.float32)
        scale[scale == 0] = 1.0
        return {"tokens": np.clip(np.round(rows / scale[:, None]), -127, 127).astype(np.int8), "scale": scale}

    def decode(self, codes):
        return codes["tokens"].astype(np.float32) * codes["scale"][:, None]

    def flat(self, codes, decode=True):
        return codes["tokens"], codes["scale"]


class Residual(Codec):
    """
    ColBERTv2 / PLAID residual compression: each token row is stored as the id of its nearest k-means centroid plus its residual
    (row - centroid) quantised to `bits` bits per dimension.

    Buckets are learned per dimension from the residuals of the training sample: "uniform" (default) splits the 0.1-99.9th
    percentile range into 2^bits equal steps and decodes each to its midpoint; "quantile" puts the buckets at equal shares of the
    residual distribution and decodes each to the median of its share (PLAID's recipe, per dimension instead of one set for all
    dimensions). Quantile buckets reconstruct rows slightly better on average but coarsen the tails, and MaxSim is decided by
    the largest dot products: on SciFact with the stand-in (384-dim tokens, 100 queries re-ranking exact MaxSim's top 100), uniform
    buckets kept 0.87 / 0.94 / 0.99 of exact MaxSim's top 10 at 1 / 2 / 4 bits, quantile buckets 0.80 / 0.89 / 0.96.

    The trained state is kept when documents are added after training (upserts): every stored code stays valid and no document
    is re-encoded or re-trained, except once for a state trained on fewer than RESIDUAL rows (see Codec.trusted). The cost is
    drift: tokens unlike the training sample get larger residuals, clipped to the outer buckets, so their reconstruction error
    grows. Rebuild (or transcode into a freshly trained store) when the corpus changes character.
    """

    name = "residual"
    defaults = {"centroids": None, "bits": 2, "buckets": "uniform", "iterations": 20, "seed": 42}
    enough = RESIDUAL

    def __init__(self, dim, **options):
        super().__init__(dim, **options)

        options = self.options
        if isinstance(options["bits"], bool) or not isinstance(options["bits"], (int, np.integer)) or options["bits"] not in (1, 2, 4):
            raise ValueError(f"Residual bits must be 1, 2 or 4, got {options['bits']!r}")
        if options.get("buckets", "uniform") not in ("quantile", "uniform"):
            raise ValueError(f"Residual buckets must be 'quantile' or 'uniform', got {options['buckets']!r}")
        for key in ("centroids", "iterations", "seed"):
            value, low = options[key], 0 if key == "seed" else 1
            if (value is not None or key != "centroids") and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low):
                raise ValueError(f"Residual {key} must be an integer >= {low}{' or None' if key == 'centroids' else ''}, got {value!r}")
            options[key] = int(value) if value is not None else None
        options["bits"] = int(options["bits"])

        # Learned state: centroids (k, dim), bucket cutoffs (levels - 1, dim) and decoded values (levels, dim); derived: the
        # centroid assignment index, the byte lookup table used to decode and, for evenly spaced values, the step per dimension
        self.centroids, self.cutoffs, self.weights, self.index, self.table, self.steps = None, None, None, None, None, None

    @property
    def trained(self):
        return self.centroids is not None

    def train(self, sample, centroids=None):
        """
        Learns centroids (k-means) and buckets from a sample of token rows.

        Args:
            sample: float32 (n, dim) token rows
            centroids: float32 (k, dim) centroids to keep instead of running k-means, e.g. another Residual's of the same sample
                       (the fidelity ladder tries several bit widths over one clustering)
        """

        # pylint: disable=C0415
        import faiss

        sample = self.checksample(sample)
        if centroids is not None:
            centroids = self.checkstate({"centroids": centroids}, {"centroids": (len(centroids), self.dim)})["centroids"]
            self.setcentroids(centroids)
            self.options["centroids"], self.sample = len(centroids), len(sample)
            self.buckets(sample)
            return

        # ColBERTv2 sizes k as a power of two near 16 * sqrt(tokens); capped so every centroid sees >= 39 rows (faiss's minimum)
        k = self.options["centroids"]
        if k is None:
            k = 1 << int(np.log2(max(1.0, min(16 * np.sqrt(len(sample)), len(sample) / 39))))
        if k > len(sample):
            raise ValueError(f"Residual centroids ({k}) must not exceed the training rows ({len(sample)})")

        # faiss warns on stderr below 39 rows per centroid; a small first write is expected here (the codec is then marked
        # untrusted and retrained later), so say it once in our own log instead
        kmeans = faiss.Kmeans(self.dim, k, niter=self.options["iterations"], seed=self.options["seed"], verbose=False, min_points_per_centroid=1)
        kmeans.train(sample)
        if len(sample) < self.enough:
            logger.info("Residual codec trained on %d token rows; it is retrained once the index holds %d", len(sample), self.enough)
        self.setcentroids(kmeans.centroids)
        self.options["centroids"], self.sample = k, len(sample)
        self.buckets(sample)

    def buckets(self, sample):
        """
        Learns the residual buckets from a sample, per dimension, given the centroids.

        Args:
            sample: float32 (n, dim) token rows
        """

        residuals = sample - self.centroids[self.assign(sample)]
        levels = 1 << self.options["bits"]
        if self.options["buckets"] == "quantile":
            self.cutoffs = np.quantile(residuals, np.arange(1, levels) / levels, axis=0).astype(np.float32)
            self.weights = np.quantile(residuals, (np.arange(levels) + 0.5) / levels, axis=0).astype(np.float32)
        else:
            low, high = np.quantile(residuals, [0.001, 0.999], axis=0)
            step = (high - low) / levels
            self.cutoffs = (low + step * np.arange(1, levels)[:, None]).astype(np.float32)
            self.weights = (low + step * (np.arange(levels)[:, None] + 0.5)).astype(np.float32)

        self.settable()

    def parts(self):
        # Residual indexes packed 8 / bits to a byte
        return {"codes": (self.idtype(), ()), "residuals": ("uint8", (-(-self.dim * self.options["bits"] // 8),))}

    def idtype(self):
        """
        Returns:
            the narrowest unsigned dtype name that holds a centroid id (uint16 while the count is unknown)
        """

        k = self.options["centroids"]
        return "uint8" if k is not None and k <= 1 << 8 else "uint16" if k is None or k <= 1 << 16 else "uint32"

    def encode(self, rows):
        self.checktrained()
        rows = np.asarray(rows, dtype=np.float32)
        codes = self.assign(rows)

        # Bucket index per value: count the cutoffs below it (2^bits - 1 comparisons). Residuals are formed and compared a cache
        # sized block of rows at a time: 2.5 x faster than passing over the whole batch once per cutoff
        indexes = np.zeros(rows.shape, dtype=np.uint8)
        above = np.empty((min(len(rows), BUCKETS), rows.shape[1]), dtype=bool)
        for start in range(0, len(rows), BUCKETS):
            residuals = rows[start : start + BUCKETS] - self.centroids[codes[start : start + BUCKETS]]
            block, mask = indexes[start : start + BUCKETS], above[: len(residuals)]
            for cutoff in self.cutoffs:
                np.greater(residuals, cutoff, out=mask)
                block += mask

        return {"codes": codes.astype(self.parts()["codes"][0]), "residuals": self.pack(indexes)}

    def decode(self, codes):
        self.checktrained()

        # One table lookup per packed byte gives the decoded residuals of all the dimensions it holds
        packed = codes["residuals"]
        width = packed.shape[1]
        residuals = np.take(self.table, packed + np.arange(0, 256 * width, 256, dtype=np.intp), axis=0).reshape(
            len(packed), width * self.table.shape[1]
        )

        tokens = np.take(self.centroids, codes["codes"].astype(np.intp), axis=0)
        tokens += residuals[:, : self.dim]
        return tokens

    def similarities(self, codes, query):
        self.checktrained()
        if self.steps is None:
            return super().similarities(codes, query)

        # With evenly spaced values, weights[l] = weights[0] + l * step, so q . token = q . centroid + q . weights[0] +
        # sum_d index_d * step_d * q_d. That is one product of the query with the centroids, gathered per row, plus, for each bit
        # position in a byte, the (rows, width) indexes stored there times the matching rows of step * q: nothing is decoded
        bits = self.options["bits"]
        scores = (torch.from_numpy(self.centroids) @ query.T).index_select(0, torch.from_numpy(codes["codes"].astype(np.int64)))
        scores += torch.from_numpy(self.weights[0]) @ query.T

        accumulate(scores, codes["residuals"], torch.from_numpy(self.steps)[:, None] * query.T, bits)
        return scores

    def state(self):
        return {"centroids": self.centroids, "cutoffs": self.cutoffs, "weights": self.weights} if self.trained else {}

    def restore(self, state):
        k, levels = self.options["centroids"], 1 << self.options["bits"]
        if k is None:
            raise ValueError("Residual codec config has no centroids count: the codec was saved untrained")

        state = self.checkstate(state, {"centroids": (k, self.dim), "cutoffs": (levels - 1, self.dim), "weights": (levels, self.dim)})
        self.setcentroids(state["centroids"])
        self.cutoffs, self.weights = state["cutoffs"], state["weights"]
        self.settable()

    def setcentroids(self, centroids):
        """
        Sets the centroids and builds the exact L2 index that assigns rows to them.

        Args:
            centroids: float32 (k, dim)
        """

        # pylint: disable=C0415
        import faiss

        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.index = faiss.IndexFlatL2(self.dim)
        self.index.add(self.centroids)

    def settable(self):
        """
        Builds the decode table: for packed byte position j and byte value b, the decoded residuals of the 8 / bits dimensions
        that byte holds, shape (width * 256, 8 / bits).
        """

        bits = self.options["bits"]
        per = 8 // bits
        width = -(-self.dim // per)

        # Weights padded with zero columns up to the packed width, then looked up for every byte value
        weights = np.zeros((len(self.weights), width * per), dtype=np.float32)
        weights[:, : self.dim] = self.weights
        indexes = self.unpack(np.arange(256, dtype=np.uint8)[:, None], per)
        columns = np.arange(width)[:, None] * per + np.arange(per)
        self.table = np.ascontiguousarray(weights[indexes[None], columns[:, None]].reshape(width * 256, per))

        # Evenly spaced values (uniform buckets, or any two values): their step per dimension lets similarities() score codes
        # without decoding them. Quantile values are not evenly spaced: they decode a block at a time.
        steps = self.weights[1] - self.weights[0]
        spaced = self.weights[0] + np.arange(len(self.weights), dtype=np.float32)[:, None] * steps
        even = np.abs(spaced - self.weights).max() <= 1e-6 * max(1.0, float(np.abs(self.weights).max()))
        self.steps = np.ascontiguousarray(steps) if even else None

    def assign(self, rows):
        """
        Nearest centroid of each row.

        Args:
            rows: float32 (n, dim)

        Returns:
            int64 (n,) centroid ids
        """

        if not len(rows):
            return np.zeros(0, dtype=np.int64)

        _, ids = self.index.search(np.ascontiguousarray(rows, dtype=np.float32), 1)
        return ids[:, 0]

    def pack(self, indexes):
        """
        Packs bucket indexes (n, dim) < 2^bits into bytes (see pack).

        Args:
            indexes: uint8 (n, dim)

        Returns:
            uint8 (n, ceil(dim * bits / 8))
        """

        return pack(indexes, self.options["bits"])

    def unpack(self, packed, dim=None):
        """
        Inverse of pack.

        Args:
            packed: uint8 (n, width)
            dim: values kept per row, defaults to the codec's dim

        Returns:
            uint8 (n, dim) bucket indexes
        """

        return unpack(packed, self.options["bits"], dim or self.dim)

    def checktrained(self):
        """
        Raises an error when the codec has no trained state.
        """

        if not self.trained:
            raise RuntimeError(f"Codec {self.name!r} is not trained: train it on a sample of token rows first")


class Adaptive(Residual):
    """
    Residual compression with the bits spent where the residuals vary: the residuals (row - nearest centroid) are rotated onto
    their principal axes (an orthogonal PCA basis learned from the sample), then each axis gets 0, 1, 2 or 4 bits, chosen so that
    the squared quantization error summed over axes is least for an average of `bits` bits per value (greedy water-filling,
    error of a b-bit uniform quantizer ~ variance / 4^b). Axes with 0 bits decode to their mean. Each axis is quantized like
    Residual's uniform buckets (the 0.1-99.9th percentile range in 2^b equal steps, decoded to midpoints), and the axes of one
    width are packed together.

    Rotation is orthogonal, so a query scores codes without decoding: q . row = q . centroid + (q R) . value, and value is
    linear in the stored indexes (see similarities). Measured on SciFact with the stand-in (its first 1,024 documents
    pooled by 2, fidelity.Sample agreement): 2 bits keep 0.978 of exact MaxSim's nDCG@10 ranking where Residual's 2 bits keep
    0.972, and 2.5 bits keep 0.980 (docs/fidelity.md).
    """

    name = "adaptive"
    defaults = {"centroids": None, "bits": 2.5, "iterations": 20, "seed": 42}

    # Bit widths an axis can get
    WIDTHS = (0, 1, 2, 4)

    def __init__(self, dim, **options):
        bits = options.get("bits", self.defaults["bits"])
        if isinstance(bits, bool) or not isinstance(bits, (int, float, np.integer, np.floating)) or not 0 < bits <= 4:
            raise ValueError(f"Adaptive bits must be a number in (0, 4] (average bits per value), got {bits!r}")

        # Residual checks the other options; its bits check sees a valid stand-in
        super().__init__(dim, **{**options, "bits": 2})
        self.options["bits"] = float(bits) if not float(bits).is_integer() else int(bits)

        # Learned state beyond Residual's centroids: rotation (dim, dim), width per axis, lowest value and step per axis
        self.rotation, self.widths, self.low, self.step = None, None, None, None

    @property
    def budget(self):
        """
        Returns:
            total bits per row
        """

        return int(round(self.options["bits"] * self.dim))

    def buckets(self, sample):
        residuals = (sample - self.centroids[self.assign(sample)]).astype(np.float64)

        # Principal axes of the residuals, largest variance first; a fixed sign per axis keeps the basis deterministic
        values, vectors = np.linalg.eigh(np.cov(residuals, rowvar=False) if len(residuals) > 1 else np.eye(self.dim))
        vectors = vectors[:, ::-1]
        vectors *= np.where(vectors[np.abs(vectors).argmax(axis=0), np.arange(self.dim)] < 0, -1.0, 1.0)
        rotated = residuals @ vectors

        widths = allocate(rotated.var(axis=0), self.budget, self.WIDTHS)
        low, high = np.quantile(rotated, [0.001, 0.999], axis=0)
        step = (high - low) / (1 << widths)

        # 0-bit axes decode to their mean: a single bucket centred there
        mean = rotated.mean(axis=0)
        low = np.where(widths == 0, mean - step / 2, low)

        self.rotation = np.ascontiguousarray(vectors, dtype=np.float32)
        self.widths, self.low, self.step = widths.astype(np.int64), low.astype(np.float32), step.astype(np.float32)

    def groups(self):
        """
        Axes stored with each nonzero width that some axis has.

        Returns:
            {width: int64 array of axes}
        """

        groups = {width: np.flatnonzero(self.widths == width) for width in self.WIDTHS[1:]}
        return {width: axes for width, axes in groups.items() if len(axes)}

    def parts(self):
        kind = self.idtype()
        if self.widths is None:
            return {"codes": (kind, ())}

        return {"codes": (kind, ()), **{f"w{width}": ("uint8", (-(-len(axes) * width // 8),)) for width, axes in self.groups().items()}}

    @property
    def bytes(self):
        # Before training the widths are unknown: the budget rounded up to bytes per width is within a few bytes of it
        if self.widths is None:
            return 2 + -(-self.budget // 8)

        return super().bytes

    def encode(self, rows):
        self.checktrained()
        codes = self.assign(rows)
        rotated = (rows - self.centroids[codes]) @ self.rotation

        result = {"codes": codes.astype(self.parts()["codes"][0])}
        for width, axes in self.groups().items():
            indexes = np.floor((rotated[:, axes] - self.low[axes]) / self.step[axes])
            result[f"w{width}"] = pack(np.clip(indexes, 0, (1 << width) - 1).astype(np.uint8), width)

        return result

    def values(self, codes):
        """
        Decoded rotated residuals.

        Args:
            codes: {part name: array}

        Returns:
            float32 (n, dim)
        """

        count = len(codes["codes"])
        values = np.broadcast_to(self.low + self.step / 2, (count, self.dim)).copy()
        for width, axes in self.groups().items():
            indexes = unpack(codes[f"w{width}"], width, len(axes))
            values[:, axes] += indexes * self.step[axes]

        return values

    def decode(self, codes):
        self.checktrained()
        tokens = np.take(self.centroids, codes["codes"].astype(np.intp), axis=0)
        tokens += self.values(codes) @ self.rotation.T
        return tokens

    def similarities(self, codes, query):
        self.checktrained()

        # q . row = q . centroid + (q R) . (low + step / 2) + sum over stored axes of index * step * (q R)
        rotated = query @ torch.from_numpy(self.rotation)
        scores = (torch.from_numpy(self.centroids) @ query.T).index_select(0, torch.from_numpy(codes["codes"].astype(np.int64)))
        scores += torch.from_numpy(self.low + self.step / 2) @ rotated.T
        for width, axes in self.groups().items():
            accumulate(scores, codes[f"w{width}"], torch.from_numpy(self.step[axes])[:, None] * rotated.T[axes], width)

        return scores

    def state(self):
        if not self.trained:
            return {}

        return {"centroids": self.centroids, "rotation": self.rotation, "widths": self.widths.astype(np.float32), "low": self.low, "step": self.step}

    def restore(self, state):
        k = self.options["centroids"]
        if k is None:
            raise ValueError("Adaptive codec config has no centroids count: the codec was saved untrained")

        shapes = {"centroids": (k, self.dim), "rotation": (self.dim, self.dim), "widths": (self.dim,), "low": (self.dim,), "step": (self.dim,)}
        state = self.checkstate(state, shapes)
        widths = state["widths"].astype(np.int64)
        if not np.isin(widths, self.WIDTHS).all() or int(widths.sum()) > self.budget:
            raise ValueError(f"Adaptive codec state has widths outside {self.WIDTHS} or over the budget of {self.budget} bits")

        self.setcentroids(state["centroids"])
        self.rotation, self.widths, self.low, self.step = state["rotation"], widths, state["low"], state["step"]


def allocate(variances, budget, widths):
    """
    Bit widths per axis for a total budget, greedy water-filling: starting from 0 bits everywhere, repeatedly move the axis whose
    next width removes the most squared error per bit spent (a b-bit quantizer leaves ~ variance / 4^b), while the budget allows.

    Args:
        variances: (dim,) variance per axis
        budget: total bits
        widths: allowed widths, ascending, starting at 0

    Returns:
        int64 (dim,) widths
    """

    import heapq  # pylint: disable=C0415

    variances = np.asarray(variances, dtype=np.float64)
    result = np.zeros(len(variances), dtype=np.int64)

    def step(axis):
        current = result[axis]
        following = [x for x in widths if x > current]
        if not following:
            return None
        width = following[0]
        gain = variances[axis] * (4.0**-current - 4.0**-width) / (width - current)
        return (-gain, axis, width)

    # One entry per axis at most, always its next width: an axis whose next step does not fit is dropped
    heap = [x for x in (step(axis) for axis in range(len(variances))) if x]
    heapq.heapify(heap)
    spent = 0
    while heap:
        _, axis, width = heapq.heappop(heap)
        if spent + width - result[axis] > budget:
            continue
        spent += width - result[axis]
        result[axis] = width
        entry = step(axis)
        if entry:
            heapq.heappush(heap, entry)

    return result


def pack(indexes, bits):
    """
    Packs indexes (n, dim) < 2^bits into bytes, 8 / bits values per byte, low bits first (bits 1, 2, 4 or 8).

    Args:
        indexes: uint8 (n, dim)
        bits: bits per value

    Returns:
        uint8 (n, ceil(dim * bits / 8))
    """

    per = 8 // bits
    dim = indexes.shape[1]
    width = -(-dim // per)

    padded = np.asarray(indexes, dtype=np.uint8)
    if dim != width * per:
        padded = np.zeros((len(indexes), width * per), dtype=np.uint8)
        padded[:, :dim] = indexes

    # One shift-or per value position in a byte, over strided views: 8 x faster than a reduce over the short last axis at 4 bits
    values = padded.reshape(len(indexes), width, per)
    packed = values[:, :, 0].copy()
    for position in range(1, per):
        packed |= values[:, :, position] << np.uint8(position * bits)
    return packed


def unpack(packed, bits, dim):
    """
    Inverse of pack.

    Args:
        packed: uint8 (n, width)
        bits: bits per value
        dim: values kept per row

    Returns:
        uint8 (n, dim) indexes
    """

    per = 8 // bits
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    indexes = (packed[:, :, None] >> shifts) & np.uint8((1 << bits) - 1)
    return indexes.reshape(len(packed), packed.shape[1] * per)[:, :dim]


def accumulate(scores, packed, slopes, bits):
    """
    Adds sum_j index_j * slopes[j] to every row's scores, reading the indexes straight from their packed bytes: for each bit
    position in a byte, the (rows, bytes) indexes stored there times the matching rows of slopes. Nothing is unpacked.

    Args:
        scores: float32 (n, q) tensor, updated in place
        packed: uint8 (n, bytes) packed indexes (see pack)
        slopes: float32 (values, q) tensor, one row per packed value
        bits: bits per value
    """

    per, mask = 8 // bits, (1 << bits) - 1

    # Slope rows for every packed value slot, zero for the padding slots of the last byte
    padded = torch.zeros((-(-len(slopes) // per) * per, slopes.shape[1]), dtype=torch.float32)
    padded[: len(slopes)] = slopes
    rows = [padded[position::per].contiguous() for position in range(per)]

    packed = torch.from_numpy(np.ascontiguousarray(packed))
    for start in range(0, len(packed), ROWS):
        block, out = packed[start : start + ROWS], scores[start : start + ROWS]
        for position, slope in enumerate(rows):
            out.addmm_(((block >> (position * bits)) & mask).float(), slope)


class PQ(Codec):
    """
    Product quantization (faiss.ProductQuantizer): each row is split into m sub-vectors, each stored as the id (1 byte) of its
    nearest of 256 sub-centroids learned on the training sample. m bytes per token; m must divide dim. The trained codebooks are
    kept on upsert, as for Residual.
    """

    name = "pq"
    defaults = {"m": None}

    # Sub-quantizer bits: one byte per sub-vector
    NBITS = 8

    # faiss's k-means wants 39 rows per centroid: 256 sub-centroids learn from 9,984 rows
    enough = 39 << NBITS

    def __init__(self, dim, **options):
        super().__init__(dim, **options)

        m = self.options["m"]
        if m is None:
            # Default: 4-dim sub-vectors (dim / 4 bytes per token), or the largest divisor of dim not above dim / 4
            m = max(x for x in range(1, max(1, self.dim // 4) + 1) if self.dim % x == 0)
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 or self.dim % m:
            divisors = [x for x in range(1, self.dim + 1) if self.dim % x == 0]
            raise ValueError(f"PQ m must be a divisor of dim {self.dim}, got {m!r}, accepted: {', '.join(map(str, divisors))}")

        self.options["m"] = int(m)
        self.codebooks, self.quantizer = None, None

    @property
    def trained(self):
        return self.codebooks is not None

    def train(self, sample):
        # pylint: disable=C0415
        import faiss

        sample = self.checksample(sample, 1 << self.NBITS)
        quantizer = faiss.ProductQuantizer(self.dim, self.options["m"], self.NBITS)
        quantizer.cp.min_points_per_centroid = 1
        quantizer.train(sample)
        if len(sample) < self.enough:
            logger.info("PQ codec trained on %d token rows; it is retrained once the index holds %d", len(sample), self.enough)

        m, ksub = self.options["m"], 1 << self.NBITS
        self.codebooks = faiss.vector_to_array(quantizer.centroids).reshape(m, ksub, self.dim // m).astype(np.float32)
        self.quantizer, self.sample = quantizer, len(sample)

    def parts(self):
        return {"codes": ("uint8", (self.options["m"],))}

    def encode(self, rows):
        if not self.trained:
            raise RuntimeError(f"Codec {self.name!r} is not trained: train it on a sample of token rows first")

        codes = (
            self.quantizer.compute_codes(np.ascontiguousarray(rows, dtype=np.float32)) if len(rows) else np.zeros((0, self.options["m"]), np.uint8)
        )
        return {"codes": codes}

    def decode(self, codes):
        if not self.trained:
            raise RuntimeError(f"Codec {self.name!r} is not trained: train it on a sample of token rows first")

        # (n, m) codes index each sub-quantizer's codebook: one gather for the whole block
        codes = codes["codes"]
        return self.codebooks[np.arange(self.options["m"]), codes].reshape(len(codes), self.dim)

    def state(self):
        return {"codebooks": self.codebooks} if self.trained else {}

    def restore(self, state):
        # pylint: disable=C0415
        import faiss

        m = self.options["m"]
        state = self.checkstate(state, {"codebooks": (m, 1 << self.NBITS, self.dim // m)})
        self.codebooks = state["codebooks"]
        self.quantizer = faiss.ProductQuantizer(self.dim, m, self.NBITS)
        faiss.copy_array_to_vector(self.codebooks.ravel(), self.quantizer.centroids)


class Codes:
    """
    A gather of token codes from a codec that does not score its rows as stored (Codec.flat with decode False). maxsim_flat
    scores it through the codec's similarities(), a block of rows at a time, instead of decoding the whole gather to float32.
    """

    def __init__(self, codec, codes):
        """
        Args:
            codec: the Codec that wrote the codes
            codes: {part name: array (n, *row shape)}
        """

        self.codec, self.codes = codec, codes
        self.shape, self.ndim = (len(next(iter(codes.values()))), codec.dim), 2

    def __len__(self):
        return self.shape[0]

    def similarities(self, query):
        """
        Args:
            query: float32 (q, dim) tensor

        Returns:
            float32 (n, q) tensor of dot products
        """

        return self.codec.similarities(self.codes, query)

    def decode(self):
        """
        Returns:
            float32 (n, dim) decoded rows
        """

        return self.codec.decode(self.codes)


# Codecs by name: adding one is a new class plus a line here
CODECS = {"float32": Float32, "float16": Float16, "int8": Int8, "residual": Residual, "adaptive": Adaptive, "pq": PQ}


def create(name, dim, **options):
    """
    Creates a codec by name.

    Args:
        name: a key of CODECS
        dim: token dimension
        options: codec options

    Returns:
        Codec
    """

    if not isinstance(name, str) or name not in CODECS:
        raise ValueError(f"Unknown token codec {name!r}, accepted: {', '.join(CODECS)}")

    return CODECS[name](dim, **options)


def fromconfig(config, dim):
    """
    Creates a codec from its saved config (name plus resolved options).

    Args:
        config: dict with "name" and options
        dim: token dimension

    Returns:
        Codec
    """

    if not isinstance(config, dict):
        raise ValueError(f"Codec config must be a dict with a name, got {config!r}")

    options = dict(config)
    sample = options.pop("sample", None)
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise ValueError(f"Codec config sample must be a positive integer (training rows) or absent, got {sample!r}")

    codec = create(options.pop("name", None), dim, **options)
    codec.sample = sample
    return codec
