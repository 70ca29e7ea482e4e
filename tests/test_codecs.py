"""
Codecs module tests
"""

import json

import numpy as np
import pytest
import torch

from txtai_muvera.core import codecs

DIM = 16


def tokens(seed, count, dim=DIM, clusters=12, corpus=0):
    """
    L2-normalised token rows drawn around a corpus's few directions, like real token vectors (clustered, not white noise).
    """

    centers = np.random.default_rng(1000 + corpus).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, clusters, count)] + 0.4 * rng.standard_normal((count, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cosine(a, b):
    """
    Mean cosine between matching rows.
    """

    return float(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def trained(name, seed=0, rows=2000, dim=DIM, **options):
    """
    A codec trained on clustered rows.
    """

    codec = codecs.create(name, dim, **options)
    codec.train(tokens(seed, rows, dim))
    return codec


def test_table():
    assert list(codecs.CODECS) == ["float32", "float16", "int8", "residual", "adaptive", "pq"]
    for name, cls in codecs.CODECS.items():
        assert cls.name == name and issubclass(cls, codecs.Codec)

    with pytest.raises(ValueError, match="Unknown token codec 'bfloat16', accepted: float32, float16, int8, residual, adaptive, pq"):
        codecs.create("bfloat16", DIM)
    with pytest.raises(ValueError, match="Unknown option 'bitz' for codec 'residual', accepted: bits, buckets, centroids, iterations, seed"):
        codecs.create("residual", DIM, bitz=2)
    with pytest.raises(ValueError, match="Unknown option 'bits' for codec 'float16', accepted: none"):
        codecs.create("float16", DIM, bits=2)
    with pytest.raises(ValueError, match="Residual bits must be 1, 2 or 4, got 3"):
        codecs.create("residual", DIM, bits=3)
    with pytest.raises(ValueError, match="Residual bits must be 1, 2 or 4, got 2.0"):
        codecs.create("residual", DIM, bits=2.0)
    with pytest.raises(ValueError, match="Residual buckets must be 'quantile' or 'uniform', got 'linear'"):
        codecs.create("residual", DIM, buckets="linear")
    with pytest.raises(ValueError, match=r"Residual centroids must be an integer >= 1 or None, got 0"):
        codecs.create("residual", DIM, centroids=0)
    for bits in (0, 4.5, True, "2"):
        with pytest.raises(ValueError, match=r"Adaptive bits must be a number in \(0, 4\] \(average bits per value\), got"):
            codecs.create("adaptive", DIM, bits=bits)
    with pytest.raises(ValueError, match="Unknown option 'buckets' for codec 'adaptive', accepted: bits, centroids, iterations, seed"):
        codecs.create("adaptive", DIM, buckets="uniform")
    with pytest.raises(ValueError, match="PQ m must be a divisor of dim 16, got 5, accepted: 1, 2, 4, 8, 16"):
        codecs.create("pq", DIM, m=5)
    with pytest.raises(ValueError, match="dim must be a positive integer, got 0"):
        codecs.create("pq", 0)

    # Resolved defaults: PQ uses 4-dim sub-vectors, residual sizes its centroids when trained
    assert codecs.create("pq", 128).config == {"name": "pq", "m": 32}
    assert codecs.create("pq", 13).config["m"] == 1
    assert codecs.create("residual", DIM).config["centroids"] is None


def test_fixed():
    rows = tokens(1, 300)
    rows[5] = 0

    for name in ("float32", "float16"):
        codec = codecs.create(name, DIM)
        assert codec.trained and codec.native and codec.bytes == DIM * np.dtype(name).itemsize
        np.testing.assert_array_equal(codec.decode(codec.encode(rows)), rows.astype(name).astype(np.float32))

    # int8 against a row-by-row loop of the spec
    codec = codecs.create("int8", DIM)
    codes = codec.encode(rows)
    assert codec.bytes == DIM + 4
    for x, row in enumerate(rows):
        scale = np.float32(np.abs(row).max() / 127) or np.float32(1.0)
        np.testing.assert_array_equal(codes["tokens"][x], np.round(row / scale).astype(np.int8))
        assert codes["scale"][x] == scale
        np.testing.assert_allclose(codec.decode({k: v[x : x + 1] for k, v in codes.items()})[0], codes["tokens"][x] * scale, rtol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("buckets", ["quantile", "uniform"])
def test_residual_twin(bits, buckets, monkeypatch):
    # Residuals are bucketed in blocks of codecs.BUCKETS rows, made smaller here so that the 200 rows cross block boundaries
    monkeypatch.setattr(codecs, "BUCKETS", 64)
    codec = trained("residual", bits=bits, buckets=buckets, centroids=32)
    rows = tokens(7, 200)
    codes = codec.encode(rows)
    decoded = codec.decode(codes)
    assert codes["codes"].dtype == np.uint8 and codes["residuals"].shape == (200, -(-DIM * bits // 8))

    for x, row in enumerate(rows):
        # Nearest centroid by a loop over the centroids (faiss may break a near-tie the other way: compare distances)
        distances = [float(np.sum((row - c) ** 2)) for c in codec.centroids]
        assert distances[codes["codes"][x]] <= min(distances) + 1e-5

        # Bucket of every dimension by counting cutoffs below it, packed low bits first, decoded by a table lookup
        centroid = codec.centroids[codes["codes"][x]]
        packed, value = codes["residuals"][x], []
        for d in range(DIM):
            residual = row[d] - centroid[d]
            bucket = sum(1 for cutoff in codec.cutoffs[:, d] if residual > cutoff)
            stored = (int(packed[d * bits // 8]) >> (d * bits % 8)) & ((1 << bits) - 1)
            assert stored == bucket
            value.append(centroid[d] + codec.weights[bucket, d])
        np.testing.assert_allclose(decoded[x], value, rtol=1e-6, atol=1e-6)


def test_residual_quality():
    rows = tokens(3, 1000)
    previous = 0.0
    for bits in (1, 2, 4):
        codec = trained("residual", bits=bits)
        quality = cosine(codec.decode(codec.encode(rows)), rows)
        assert quality > previous
        previous = quality
    assert previous > 0.99

    # Auto-sized centroids: a power of two, at least 39 training rows each, and the narrowest id type
    codec = trained("residual", rows=2000)
    assert codec.config["centroids"] == 32 and codec.parts()["codes"][0] == "uint8"
    assert trained("residual", rows=20).config["centroids"] == 1


def test_pq_twin():
    codec = trained("pq", m=4)
    rows = tokens(8, 100)
    codes = codec.encode(rows)["codes"]
    decoded = codec.decode({"codes": codes})
    assert codes.shape == (100, 4) and codes.dtype == np.uint8 and codec.bytes == 4

    sub = DIM // 4
    for x, row in enumerate(rows):
        for j in range(4):
            # Nearest sub-centroid by a loop, decoded by concatenating the chosen sub-centroids
            distances = [float(np.sum((row[j * sub : (j + 1) * sub] - c) ** 2)) for c in codec.codebooks[j]]
            assert distances[codes[x, j]] <= min(distances) + 1e-5
            np.testing.assert_array_equal(decoded[x, j * sub : (j + 1) * sub], codec.codebooks[j, codes[x, j]])

    assert cosine(decoded, rows) > 0.9


@pytest.mark.parametrize(
    "name,options,even",
    [
        ("residual", {"bits": 1, "buckets": "quantile"}, True),
        ("residual", {"bits": 2}, True),
        ("residual", {"bits": 4}, True),
        ("residual", {"bits": 2, "buckets": "quantile"}, False),
        ("residual", {"bits": 4, "buckets": "quantile"}, False),
        ("pq", {"m": 13}, False),
        ("adaptive", {"bits": 2.5}, False),
        ("adaptive", {"bits": 1}, False),
        ("adaptive", {"bits": 4}, False),
    ],
)
def test_similarities_twin(name, options, even, monkeypatch):
    """
    Codes score against a query like their decoded rows: evenly spaced residual values (uniform buckets, or two values) by the
    centroid product plus the bucket indexes times step * q, without decoding; others by decoding a block at a time. Checked
    against a plain loop over rows and dimensions, on an odd dimension (padding slots in the last byte) and more rows than a
    block (packed codes are scored in blocks of codecs.ROWS rows, made smaller here so that the loop stays short).
    """

    monkeypatch.setattr(codecs, "ROWS", 512)
    dim = 13
    codec = trained(name, dim=dim, **options)
    assert (getattr(codec, "steps", None) is not None) == even
    rows = tokens(9, codecs.BLOCK + 300, dim)
    codes = codec.encode(rows)
    query = tokens(10, 5, dim)

    # Twin: decode each row value by value, then dot products one at a time
    expected = np.zeros((len(rows), len(query)), dtype=np.float64)
    for x in range(len(rows)):
        if name == "residual":
            bits = options["bits"]
            row = [
                codec.centroids[codes["codes"][x], d]
                + codec.weights[(int(codes["residuals"][x][d * bits // 8]) >> (d * bits % 8)) & ((1 << bits) - 1), d]
                for d in range(dim)
            ]
        elif name == "adaptive":
            # Rotated values axis by axis from each width's packed bytes, then rotated back and added to the centroid
            values = []
            for axis in range(dim):
                width = int(codec.widths[axis])
                index = 0
                if width:
                    position = int(np.flatnonzero(np.flatnonzero(codec.widths == width) == axis)[0])
                    index = (int(codes[f"w{width}"][x][position * width // 8]) >> (position * width % 8)) & ((1 << width) - 1)
                values.append(float(codec.low[axis]) + float(codec.step[axis]) * (index + 0.5))
            row = [
                float(codec.centroids[codes["codes"][x], d]) + sum(values[a] * float(codec.rotation[d, a]) for a in range(dim)) for d in range(dim)
            ]
        else:
            row = [codec.codebooks[d, codes["codes"][x, d], 0] for d in range(dim)]
        for y, token in enumerate(query):
            expected[x, y] = sum(float(a) * float(b) for a, b in zip(row, token))

    block = codecs.Codes(codec, codes)
    assert block.shape == (len(rows), dim) and len(block) == len(rows)
    np.testing.assert_allclose(block.similarities(torch.from_numpy(query)).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(block.decode(), codec.decode(codes))

    # A restored codec scores the same way
    restored = codecs.fromconfig(json.loads(json.dumps(codec.config)), dim)
    restored.restore(codec.state())
    assert (getattr(restored, "steps", None) is not None) == even
    np.testing.assert_allclose(restored.similarities(codes, torch.from_numpy(query)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_flat():
    """
    Codec.flat, what gathers hand to maxsim_flat: float rows as stored, int8 with its scales, other codes decoded or kept.
    """

    rows = tokens(4, 50)
    for name in codecs.CODECS:
        codec = trained(name, **({"m": 4} if name == "pq" else {}))
        codes = codec.encode(rows)
        decoded, scale = codec.flat(codes)
        kept, same = codec.flat(codes, decode=False)
        assert (scale is not None) == (same is not None) == (name == "int8")
        if codec.native:
            assert decoded is codes["tokens"] and kept is codes["tokens"]
        else:
            np.testing.assert_array_equal(decoded, codec.decode(codes))
            assert isinstance(kept, codecs.Codes) and kept.codes is codes


@pytest.mark.parametrize(
    "name,options", [("residual", {"bits": 2}), ("residual", {"bits": 4, "buckets": "uniform"}), ("adaptive", {"bits": 2.5}), ("pq", {"m": 8})]
)
def test_state(name, options):
    codec = trained(name, **options)
    rows = tokens(9, 300)
    codes = codec.encode(rows)

    # Config is JSON, state is plain float32 arrays: a codec rebuilt from both encodes and decodes identically
    config = json.loads(json.dumps(codec.config))
    state = {key: np.array(value) for key, value in codec.state().items()}
    assert all(x.dtype == np.float32 for x in state.values())
    restored = codecs.fromconfig(config, DIM)
    assert not restored.trained
    restored.restore(state)
    assert restored.trained
    for key, value in restored.encode(rows).items():
        np.testing.assert_array_equal(value, codes[key])
    np.testing.assert_array_equal(restored.decode(codes), codec.decode(codes))

    # Batch independence: encoding rows one at a time gives the same codes
    for key, value in codec.encode(rows[:7]).items():
        np.testing.assert_array_equal(value, codes[key][:7])

    # Bad state is refused, naming the array
    broken = {**state, next(iter(state)): state[next(iter(state))][:-1]}
    with pytest.raises(ValueError, match=f"state {next(iter(state))!r} has shape"):
        codecs.fromconfig(config, DIM).restore(broken)
    nan = {key: value.copy() for key, value in state.items()}
    next(iter(nan.values()))[0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        codecs.fromconfig(config, DIM).restore(nan)


def test_adaptive():
    """
    Adaptive codes: an orthogonal rotation, widths from the allowed set within the budget, more bits to the axes that vary more,
    and less reconstruction error than Residual at the same average bits and than fewer bits of its own.
    """

    dim, rows = 32, None
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((3000, dim)) * np.linspace(2, 0.1, dim)
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    errors = {}
    for bits in (1, 2, 2.5, 4):
        codec = codecs.create("adaptive", dim, bits=bits, centroids=16)
        codec.train(rows)
        assert np.allclose(codec.rotation.T @ codec.rotation, np.eye(dim), atol=1e-5)
        assert set(codec.widths.tolist()) <= {0, 1, 2, 4} and codec.widths.sum() <= round(bits * dim)
        assert np.all(np.diff(codec.widths) <= 0)  # axes come largest variance first
        assert codec.bytes == np.dtype(codec.parts()["codes"][0]).itemsize + sum(-(-int((codec.widths == w).sum()) * w // 8) for w in (1, 2, 4))
        errors[bits] = float(np.abs(codec.decode(codec.encode(rows)) - rows).mean())

    residual = codecs.create("residual", dim, bits=2, centroids=16)
    residual.train(rows)
    assert errors[1] > errors[2] > errors[2.5] > errors[4]
    assert errors[2] < float(np.abs(residual.decode(residual.encode(rows)) - rows).mean())

    # Allocation: water-filling gives the big axes more bits, the budget is never exceeded
    # (worked by hand: 0->1 on the first axis removes 12 per bit, then 3, 3, 0.75, 0.75, 0.19 per bit; 2->4 there would cost
    # 2 bits for 0.47 each once only one is left)
    assert codecs.allocate([16.0, 4.0, 1.0, 0.01], 6, (0, 1, 2, 4)).tolist() == [2, 2, 2, 0]
    assert codecs.allocate([1.0] * 4, 8, (0, 1, 2, 4)).tolist() == [2, 2, 2, 2]


def test_training_errors():
    for name in ("residual", "pq"):
        codec = codecs.create(name, DIM)
        assert not codec.trained and codec.state() == {}
        with pytest.raises(RuntimeError, match=f"Codec '{name}' is not trained"):
            codec.encode(tokens(0, 10))
        with pytest.raises(ValueError, match=r"has shape \(10, 15\), expected \(rows, 16\)"):
            codec.train(tokens(0, 10, 15))
        bad = tokens(0, 400)
        bad[3, 3] = np.inf
        with pytest.raises(ValueError, match="NaN or infinite"):
            codec.train(bad)

    with pytest.raises(ValueError, match="Codec 'pq' needs at least 256 training token rows, got 255"):
        codecs.create("pq", DIM).train(tokens(0, 255))
    with pytest.raises(ValueError, match=r"Residual centroids \(64\) must not exceed the training rows \(50\)"):
        codecs.create("residual", DIM, centroids=64).train(tokens(0, 50))

    # Encoding and decoding nothing works
    codec = trained("residual")
    codes = codec.encode(np.zeros((0, DIM), np.float32))
    assert codec.decode(codes).shape == (0, DIM)
    codec = trained("pq")
    assert codec.decode(codec.encode(np.zeros((0, DIM), np.float32))).shape == (0, DIM)


def test_drift():
    # The trained state is kept for later documents: rows from another corpus still encode and decode (finite, same shapes), at a
    # measurable cost in reconstruction, which is why a changed corpus calls for a rebuild
    codec = trained("residual", bits=2)
    same, other = tokens(11, 500), tokens(11, 500, corpus=1)
    decoded = codec.decode(codec.encode(other))
    assert np.isfinite(decoded).all() and decoded.shape == other.shape
    assert cosine(decoded, other) < cosine(codec.decode(codec.encode(same)), same)


def test_trusted():
    # Fixed codecs learn nothing; trained codecs are trusted from `enough` training rows on (residual: codecs.RESIDUAL)
    assert all(codecs.create(name, DIM).trusted for name in ("float32", "float16", "int8"))
    assert codecs.Residual.enough == codecs.RESIDUAL == 624 and codecs.PQ.enough == 9984

    small, large = trained("residual", rows=codecs.RESIDUAL - 1), trained("residual", rows=codecs.RESIDUAL)
    assert not small.trusted and small.sample == codecs.RESIDUAL - 1 and large.trusted and large.sample == codecs.RESIDUAL

    # The untrusted state's row count goes with its config and comes back with it; trusted configs carry no count, and configs
    # without one (older indexes) are trusted
    config = json.loads(json.dumps(small.config))
    assert config["sample"] == codecs.RESIDUAL - 1 and "sample" not in large.config
    assert not codecs.fromconfig(config, DIM).trusted and codecs.fromconfig(large.config, DIM).trusted
    assert codecs.fromconfig({key: value for key, value in config.items() if key != "sample"}, DIM).trusted
    assert not trained("pq", rows=2000, m=4).trusted

    for value in (0, 2.5, True, "10"):
        with pytest.raises(ValueError, match=f"Codec config sample must be a positive integer \\(training rows\\) or absent, got {value!r}"):
            codecs.fromconfig({**config, "sample": value}, DIM)
