"""
Muvera module
"""

import numbers

import numpy as np
import torch


class Muvera:
    """
    MUVERA fixed dimensional encoder (FDE). Reduces a late interaction token matrix (tokens x dim) to one fixed vector whose inner
    products approximate MaxSim (https://arxiv.org/abs/2405.19504).

    For each repetition, tokens are bucketed into 2^hashes partitions by SimHash (Gray coded), optionally reduced with an AMS sketch
    to `projection` dims and summed (queries) or averaged (documents) per partition. Blocks are concatenated over partitions, then
    repetitions:

        dimensions = repetitions * 2^hashes * (projection or dim)

    The random streams are the same as `txtai.models.pooling.muvera.Muvera`: with fill=False and final=None the outputs are equal.

    Additions over txtai's encoder:
      - fill: an empty document partition takes the projected token whose SimHash bits are closest (Hamming) to the partition's bits.
        Filling is a document-side operation: it is ignored for queries, which always keep empty partitions at zero.
      - final: a count-sketch of the concatenated vector down to `final` dims.

    Edge cases:
      - a matrix with 0 tokens (shape (0, dim)) encodes to an all-zero vector (before and after final).
      - an empty batch returns a (0, dimensions) array when the output size is known: always when final is set, otherwise when this
        encoder has seen exactly one token dim. With no way to know the size, it raises a ValueError.
      - a document's vector depends on that document alone, never on batch size or neighbours.
    """

    # Bounds for settings
    LIMITS = {"repetitions": (1, 4096), "hashes": (0, 16), "projection": (1, 65536), "final": (1, 2**31 - 1), "seed": (0, 2**63 - 1)}

    # Tokens encoded together: bounds the working memory and keeps it cache friendly
    TOKENS = 4096

    # Upper bound on (empty partition, token) pairs scored at once when filling
    CHUNK = 1 << 22

    def __init__(self, repetitions=20, hashes=5, projection=16, seed=42, fill=False, final=None, device="cpu"):
        """
        Creates a Muvera encoder.

        Args:
            repetitions: number of independent repetitions
            hashes: number of SimHash projections, 2^hashes partitions per repetition
            projection: AMS sketch dims per partition, None keeps the token dims (identity)
            seed: random seed, repetition r draws from numpy.random.default_rng(seed + r)
            fill: fill empty document partitions with the nearest token (documents only)
            final: optional count-sketch output size, None keeps the full concatenated vector
            device: torch device used for computation
        """

        self.repetitions = self.integer("repetitions", repetitions)
        self.hashes = self.integer("hashes", hashes)
        self.projection = None if projection is None else self.integer("projection", projection)
        self.seed = self.integer("seed", seed)
        self.final = None if final is None else self.integer("final", final)

        if not isinstance(fill, (bool, np.bool_)):
            raise TypeError(f"fill must be a bool, got {fill!r}")
        self.fill = bool(fill)

        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must be a torch device name such as 'cpu' or 'cuda', got {device!r}") from error

        # Number of partitions per repetition
        self.partitions = 2**self.hashes

        # Random matrices cached per token dim
        self.cache = {}

        # Set bits of each partition code, for Hamming distances
        codes, bitcounts = np.arange(self.partitions), np.zeros(self.partitions, dtype=np.int64)
        for bit in range(self.hashes):
            bitcounts += (codes >> bit) & 1
        self.bitcounts = torch.from_numpy(bitcounts).to(self.device)

    def __call__(self, data, category):
        """
        Encodes a batch of token matrices into fixed dimensional vectors.

        Args:
            data: list of token matrices (tokens x dim), numpy arrays or torch tensors
            category: "query" (partition sums) or "data" (partition averages)

        Returns:
            float32 array of shape (len(data), dimensions)
        """

        if category not in ("query", "data"):
            raise ValueError(f"category must be 'query' or 'data', got {category!r}")

        matrices, dim = self.inputs(data)

        # Empty batch
        if dim is None:
            return np.zeros((0, self.outputsize()), dtype=np.float32)

        lengths = np.array([matrix.shape[0] for matrix in matrices], dtype=np.int64)
        vectors = torch.empty((len(matrices), self.dimensions(dim)), dtype=torch.float32, device=self.device)

        # Encode groups of whole documents: temporaries stay bounded by the group size and their buffers are reused across groups
        groups = self.groups(lengths)
        workspace = self.workspace(max(int(lengths[start:end].sum()) for start, end in groups), dim)

        with torch.inference_mode():
            for start, end in groups:
                tokens = int(lengths[start:end].sum())
                points = np.concatenate(matrices[start:end], out=workspace[0][:tokens]) if end - start > 1 else np.ascontiguousarray(matrices[start])
                points = torch.from_numpy(points).to(self.device)

                # NaN and infinity propagate through min and max
                if tokens and not all(bool(torch.isfinite(x)) for x in torch.aminmax(points)):
                    raise ValueError(f"token matrices in data[{start}:{end}] contain NaN or infinite values")

                self.encode(points, torch.from_numpy(lengths[start:end]).to(self.device), dim, category, vectors[start:end], workspace)

        return vectors.cpu().numpy()

    def __repr__(self):
        """
        String representation of this encoder.

        Returns:
            settings as a constructor call
        """

        settings = ", ".join(f"{key}={value!r}" for key, value in self.config.items())
        return f"Muvera({settings}, device={str(self.device)!r})"

    @property
    def config(self):
        """
        Resolved settings, JSON-serialisable.

        Returns:
            dict of settings
        """

        return {
            "repetitions": self.repetitions,
            "hashes": self.hashes,
            "projection": self.projection,
            "seed": self.seed,
            "fill": self.fill,
            "final": self.final,
        }

    def dimensions(self, dim):
        """
        Output size for token matrices with `dim` columns.

        Args:
            dim: token dims

        Returns:
            number of output dims
        """

        dim = self.integer("dim", dim, (1, 2**31 - 1))
        return self.final if self.final else self.repetitions * self.partitions * (self.projection or dim)

    def groups(self, lengths):
        """
        Splits a batch into consecutive groups of whole documents holding about TOKENS tokens each.

        Args:
            lengths: tokens per document

        Returns:
            list of (start, end) document ranges
        """

        # Document x belongs to group floor(tokens before x / size); a longer document forms its own group. Accelerators take
        # larger groups.
        size = self.TOKENS if self.device.type == "cpu" else 16 * self.TOKENS
        starts = np.cumsum(lengths) - lengths
        bounds = np.flatnonzero(np.diff(starts // size)) + 1
        bounds = np.concatenate(([0], bounds, [len(lengths)]))

        return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

    def workspace(self, tokens, dim):
        """
        Allocates buffers for groups of up to `tokens` tokens.

        Args:
            tokens: largest group size
            dim: token dims

        Returns:
            (points, projected, simhash) buffers
        """

        reducer, simhash = self.matrices(dim)[:2]
        points = np.empty((tokens, dim), dtype=np.float32)
        projected = torch.empty((tokens, reducer.shape[1] if reducer is not None else 0), dtype=torch.float32, device=self.device)
        simhash = torch.empty((tokens, simhash.shape[1]), dtype=torch.float32, device=self.device)

        return points, projected, simhash

    def encode(self, points, lengths, dim, category, output, workspace):
        """
        Encodes a group of documents.

        Args:
            points: the group's tokens stacked (tokens x dim) float32 tensor on device
            lengths: tokens per document, int64 tensor on device
            dim: token dims
            category: "query" or "data"
            output: (documents, dimensions) tensor written in place
            workspace: buffers from workspace()
        """

        reducer, simhash, weights, offsets, lookup = self.matrices(dim)
        repetitions, partitions = self.repetitions, self.partitions
        width = self.projection or dim
        documents, total = lengths.shape[0], points.shape[0]

        # AMS sketches of all repetitions in one product, then SimHash sketches in another
        projected = None
        if reducer is not None:
            projected = self.matmul(points, reducer, workspace[1][:total]).view(total, repetitions, width)

        # SimHash bits packed per (token, repetition) as repetition * partitions + code, first projection = most significant bit.
        # Packing is a matmul with a block diagonal matrix of bit weights, exact in float32 since values < 2^31.
        if self.hashes:
            bits = self.matmul(points, simhash, workspace[2][:total]).gt_(0)
            codes = torch.addmm(offsets, bits, weights).to(torch.int64)
        else:
            codes = offsets.to(torch.int64).expand(total, -1)

        # Output row of each (token, repetition): (document, repetition, partition), partition = Gray decoded code
        owners = torch.repeat_interleave(torch.arange(documents, device=self.device), lengths)
        rows = lookup[codes] + (owners * (repetitions * partitions))[:, None]

        # Sum tokens per partition, into the full vector (in place when there is no final sketch)
        # Zeroed here rather than up front: the group's block is then still in cache for the scatter
        vectors = torch.zeros((documents, repetitions * partitions * width), device=self.device) if self.final else output.zero_()
        blocks = vectors.view(documents * repetitions * partitions, width)
        # index_add_ sums each row in token order, so a document's vector never depends on its neighbours
        if total and projected is not None:
            blocks.index_add_(0, rows.view(-1), projected.view(-1, width))
        elif total:
            for repetition in range(repetitions):
                blocks.index_add_(0, rows[:, repetition].contiguous(), points)

        # Identity projection: the tokens themselves, for filling
        projected = points[:, None, :].expand(-1, repetitions, -1) if projected is None else projected

        # Averages and empty partition filling for documents
        if category == "data":
            counts = torch.bincount(rows.reshape(-1), minlength=documents * repetitions * partitions)
            blocks /= counts.clamp(min=1).to(torch.float32)[:, None]

            if self.fill:
                self.fillempty(blocks, counts, codes, projected, lengths, width)

        # Optional count-sketch to final dims
        if self.final:
            self.sketch(vectors, dim, output.zero_())

    def fillempty(self, vectors, counts, codes, projected, lengths, width):
        """
        Fills empty document partitions in place with the projected token whose SimHash bits differ least from the partition's
        Gray code bits. The first token wins ties.

        Args:
            vectors: (documents * repetitions * partitions, width) partition averages
            counts: tokens per partition
            codes: packed SimHash bits per (token, repetition), plus repetition * partitions
            projected: (tokens, repetitions, width) projected tokens
            lengths: tokens per document
            width: block width
        """

        repetitions, partitions = self.repetitions, self.partitions

        # Empty partitions of documents with tokens
        empty = torch.nonzero(counts == 0).squeeze(1)
        document = torch.div(empty, repetitions * partitions, rounding_mode="floor")
        empty, document = empty[lengths[document] > 0], document[lengths[document] > 0]
        if not empty.shape[0]:
            return

        # Candidate tokens are the tokens of each empty partition's document
        first = (torch.cumsum(lengths, 0) - lengths)[document]
        sizes = lengths[document]
        repetition = torch.div(empty, partitions, rounding_mode="floor") % repetitions
        target = empty % partitions
        target = target ^ (target >> 1)
        longest = int(lengths.max())

        # Score in chunks to bound memory at CHUNK (partition, token) pairs
        ends = torch.cumsum(sizes, 0)
        bounds = torch.searchsorted(ends, torch.arange(self.CHUNK, int(ends[-1]) + self.CHUNK, self.CHUNK, device=self.device), right=True)

        start = 0
        for end in bounds.tolist():
            end = max(end, start + 1)
            if start >= empty.shape[0]:
                break

            # Flatten (empty partition, candidate token) pairs
            size = sizes[start:end]
            pair = torch.repeat_interleave(torch.arange(end - start, device=self.device), size)
            local = torch.arange(pair.shape[0], device=self.device) - (torch.cumsum(size, 0) - size)[pair]

            # Hamming distance between token and partition bits, then lowest (distance, position) per partition
            code = codes.reshape(-1)[(first[start:end] * repetitions + repetition[start:end])[pair] + local * repetitions] & (partitions - 1)
            key = self.bitcounts[code ^ target[start:end][pair]] * longest + local
            best = torch.full((end - start,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=self.device)
            best.scatter_reduce_(0, pair, key, reduce="amin")

            # Copy the chosen projected tokens
            vectors[empty[start:end]] = projected[first[start:end] + best % longest, repetition[start:end]].reshape(-1, width)

            start = end

    def sketch(self, vectors, dim, output):
        """
        Count-sketches concatenated vectors down to final dims.

        Args:
            vectors: (documents, full dimensions) tensor
            dim: token dims
            output: (documents, final) tensor written in place
        """

        indices, signs = self.cache[dim][5]
        output.index_add_(1, indices, vectors * signs)

    def matrices(self, dim):
        """
        Builds, once per token dim, the random matrices and lookup tables.

        Args:
            dim: token dims

        Returns:
            (reducer, simhash, weights, offsets, lookup): AMS sketch matrices of all repetitions side by side (None for the identity),
            SimHash gaussians side by side, weights and offsets pack SimHash bits into repetition * partitions + code, lookup maps
            that to repetition * partitions + partition
        """

        if dim not in self.cache:
            repetitions, hashes, projection, partitions = self.repetitions, self.hashes, self.projection, self.partitions
            simhash, reducer = [], []
            for repetition in range(repetitions):
                rng = np.random.default_rng(self.seed + repetition)
                simhash.append(rng.normal(loc=0.0, scale=1.0, size=(dim, hashes)).astype(np.float32))

                if projection:
                    # Fresh stream: AMS sketch, token dim i adds signs[i] * x[i] into column cols[i]
                    rng = np.random.default_rng(self.seed + repetition)
                    cols = rng.integers(0, projection, size=dim)
                    signs = rng.choice([-1.0, 1.0], size=dim)
                    matrix = np.zeros((dim, projection), dtype=np.float32)
                    matrix[np.arange(dim), cols] = signs
                    reducer.append(matrix)

            # Block diagonal bit weights and per repetition offsets
            weights = np.zeros((repetitions * hashes, repetitions), dtype=np.float32)
            for repetition in range(repetitions):
                weights[repetition * hashes : (repetition + 1) * hashes, repetition] = 2.0 ** np.arange(hashes - 1, -1, -1)
            offsets = np.arange(repetitions, dtype=np.float32) * partitions

            # Gray decoding: bit j of the partition is the running xor of code bits 0..j
            codes = np.arange(partitions, dtype=np.int64)
            decoded, shift = codes.copy(), 1
            while shift < hashes:
                decoded ^= decoded >> shift
                shift <<= 1
            lookup = (np.arange(repetitions, dtype=np.int64)[:, None] * partitions + decoded[None, :]).reshape(-1)

            # Final count-sketch
            final = None
            if self.final:
                size = repetitions * partitions * (projection or dim)
                rng = np.random.default_rng(self.seed)
                indices = rng.integers(0, self.final, size=size)
                signs = rng.choice([-1.0, 1.0], size=size)
                final = (torch.from_numpy(indices).to(self.device), torch.from_numpy(signs.astype(np.float32)).to(self.device))

            reducer = torch.from_numpy(np.concatenate(reducer, axis=1)).to(self.device) if projection else None
            simhash = np.concatenate(simhash, axis=1)
            self.cache[dim] = (reducer,) + tuple(torch.from_numpy(x).to(self.device) for x in (simhash, weights, offsets, lookup)) + (final,)

        return self.cache[dim][:5]

    def matmul(self, points, matrix, out):
        """
        Matrix product whose rows do not depend on how many rows there are.

        Args:
            points: tokens
            matrix: right operand
            out: output buffer

        Returns:
            points @ matrix
        """

        # A single row takes a matrix-vector kernel that rounds differently from the batched one: pad it to two rows
        if points.shape[0] == 1:
            out.copy_(torch.matmul(torch.cat([points, torch.zeros_like(points)]), matrix)[:1])
            return out

        return torch.matmul(points, matrix, out=out)

    def inputs(self, data):
        """
        Validates a batch of token matrices.

        Args:
            data: list of token matrices

        Returns:
            (list of float32 numpy matrices, dim), dim is None for an empty batch
        """

        if isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim == 2:
            raise ValueError(f"data must be a list of token matrices, got a single {tuple(data.shape)} matrix: wrap it in a list")

        matrices, dim = [], None
        for x, matrix in enumerate(data):
            if isinstance(matrix, torch.Tensor):
                matrix = matrix.detach().to("cpu", torch.float32).numpy()

            try:
                matrix = np.asarray(matrix, dtype=np.float32)
            except (TypeError, ValueError) as error:
                raise TypeError(f"data[{x}] must be a numeric token matrix, got {type(matrix).__name__}") from error

            if matrix.ndim != 2:
                raise ValueError(f"data[{x}] must be a 2-D (tokens x dim) matrix, got shape {matrix.shape}")

            if dim is None:
                dim = matrix.shape[1]
            elif matrix.shape[1] != dim:
                raise ValueError(f"data[{x}] has dim {matrix.shape[1]}, expected {dim} like data[0]")

            matrices.append(matrix)

        if dim is not None and dim < 1:
            raise ValueError(f"token matrices must have at least 1 column, got dim {dim}")

        return matrices, dim

    def outputsize(self):
        """
        Output size when no token matrix is available.

        Returns:
            output dims
        """

        if self.final:
            return self.final

        if len(self.cache) == 1:
            return self.dimensions(next(iter(self.cache)))

        raise ValueError("empty batch: the output size depends on the token dim, which this encoder has not seen (or has seen several)")

    @staticmethod
    def integer(name, value, limits=None):
        """
        Validates an integer setting.

        Args:
            name: setting name
            value: setting value
            limits: optional (low, high) bounds, defaults to LIMITS[name]

        Returns:
            value as int
        """

        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {value!r}")

        low, high = limits if limits else Muvera.LIMITS[name]
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low} and {high}, got {value}")

        return int(value)
