"""
Muvera module tests
"""

import json

import numpy as np
import pytest
import torch

from safetensors import safe_open
from txtai.models.pooling.muvera import Muvera as TxtaiMuvera

from txtai_muvera.core.muvera import Muvera


def loopencode(cloud, category, repetitions, hashes, projection, seed, fill, final):
    """
    Plain-loop MUVERA encoding of one point cloud, written from the spec, in float64.
    """

    cloud = np.asarray(cloud, dtype=np.float64)
    tokens, dim = cloud.shape
    partitions, width = 2**hashes, projection or dim

    fde = []
    for repetition in range(repetitions):
        gaussian = np.random.default_rng(seed + repetition).normal(0, 1, size=(dim, hashes)).astype(np.float32).astype(np.float64)
        if projection:
            rng = np.random.default_rng(seed + repetition)
            cols = rng.integers(0, projection, size=dim)
            signs = rng.choice([-1.0, 1.0], size=dim)

        # SimHash bits, Gray coded partition and projection of each token
        bits, indices, projected = [], [], []
        for token in cloud:
            tokenbits = [int(sum(token[i] * gaussian[i, j] for i in range(dim)) > 0) for j in range(hashes)]
            index = 0
            for bit in tokenbits:
                index = (index << 1) + (bit ^ (index & 1))

            vector = [0.0] * width
            for i in range(dim):
                if projection:
                    vector[cols[i]] += signs[i] * token[i]
                else:
                    vector[i] = token[i]

            bits.append(tokenbits)
            indices.append(index)
            projected.append(vector)

        # Partition sums, averages for documents, filling of empty document partitions
        for partition in range(partitions):
            members = [t for t in range(tokens) if indices[t] == partition]
            block = [0.0] * width
            for t in members:
                block = [a + b for a, b in zip(block, projected[t])]

            if category == "data" and members:
                block = [value / len(members) for value in block]

            if category == "data" and fill and not members and tokens:
                gray = partition ^ (partition >> 1)
                target = [(gray >> (hashes - 1 - j)) & 1 for j in range(hashes)]
                best, nearest = None, None
                for t in range(tokens):
                    distance = sum(1 for j in range(hashes) if bits[t][j] != target[j])
                    if best is None or distance < best:
                        best, nearest = distance, t
                block = list(projected[nearest])

            fde.extend(block)

    if final:
        rng = np.random.default_rng(seed)
        indices = rng.integers(0, final, size=len(fde))
        signs = rng.choice([-1.0, 1.0], size=len(fde))
        output = [0.0] * final
        for i, value in enumerate(fde):
            output[indices[i]] += signs[i] * value
        fde = output

    return np.array(fde)


def clouds(rng, count, dim, low=1, high=60):
    """
    Random L2-normalised float32 point clouds.
    """

    data = []
    for length in rng.integers(low, high + 1, size=count):
        cloud = rng.standard_normal((length, dim)).astype(np.float32)
        data.append(cloud / np.linalg.norm(cloud, axis=1, keepdims=True))

    return data


def close(actual, expected, tolerance=1e-4):
    """
    Checks vectors agree within tolerance relative to the expected vector's largest magnitude.
    """

    scale = max(float(np.abs(expected).max()), 1e-12)
    assert np.abs(actual - expected).max() / scale <= tolerance


# (repetitions, hashes, projection, fill, final, dim, seed)
SETTINGS = [
    (3, 0, 4, False, None, 8, 0),
    (2, 0, None, True, None, 5, 11),
    (2, 1, None, True, None, 6, 1),
    (4, 3, 8, True, None, 16, 2),
    (2, 6, 4, True, None, 12, 3),
    (3, 4, None, False, 50, 10, 4),
    (5, 2, 3, True, 64, 20, 5),
    (1, 5, 16, True, 100, 32, 42),
    (2, 4, 2, False, None, 8, 7),
    (3, 5, 1, True, 7, 9, 123),
]


@pytest.mark.parametrize("repetitions, hashes, projection, fill, final, dim, seed", SETTINGS)
def test_loop(repetitions, hashes, projection, fill, final, dim, seed):
    """
    Vectorised encoder agrees with the plain-loop twin, queries and documents, including single token clouds and ties.
    """

    rng = np.random.default_rng(seed)
    data = clouds(rng, 5, dim) + clouds(rng, 1, dim, 1, 1)

    # Duplicate tokens tie on every distance: the first one must win
    data.append(np.concatenate([data[0][:2], data[0][:2]]))

    encoder = Muvera(repetitions=repetitions, hashes=hashes, projection=projection, seed=seed, fill=fill, final=final)
    for category in ("query", "data"):
        outputs = encoder(data, category)
        assert outputs.dtype == np.float32 and outputs.shape == (len(data), encoder.dimensions(dim))
        for cloud, output in zip(data, outputs):
            close(output, loopencode(cloud, category, repetitions, hashes, projection, seed, fill and category == "data", final))


def test_golden(fixtures):
    """
    Reproduces the independent golden vectors.
    """

    path = fixtures / "muvera-golden" / "muvera_golden.safetensors"
    with safe_open(str(path), framework="np") as tensors:
        cases = json.loads(tensors.metadata()["cases"])
        assert cases

        for c, case in enumerate(cases):
            encoder = Muvera(**case["config"])
            data = [tensors.get_tensor(f"c{c}.points.{i}") for i in range(case["clouds"])]
            assert all(cloud.shape[1] == case["dim"] for cloud in data)

            for category, key in (("query", "query"), ("data", "document")):
                outputs = encoder(data, category)
                for i, output in enumerate(outputs):
                    close(output, tensors.get_tensor(f"c{c}.{key}.{i}"))


@pytest.mark.parametrize(
    "settings, dim",
    [({}, 128), ({"projection": None}, 16), ({"hashes": 0}, 32), ({"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}, 48)],
)
def test_txtai(settings, dim):
    """
    With fill off and no final sketch, outputs equal txtai's built-in Muvera.
    """

    data = clouds(np.random.default_rng(dim), 40, dim, 1, 120)
    for category in ("query", "data"):
        expected = TxtaiMuvera(**settings)(data, category)
        actual = Muvera(**settings)(data, category)
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() <= 1e-5


@pytest.mark.parametrize("settings", [{}, {"fill": True}, {"fill": True, "final": 300}, {"projection": None, "hashes": 3, "fill": True}])
def test_batch(settings):
    """
    A document's vector depends on that document alone: one by one, in a batch, shuffled among others and across group boundaries.
    """

    rng = np.random.default_rng(5)
    data = clouds(rng, 12, 24, 1, 90) + clouds(rng, 2, 24, 1, 1) + [np.zeros((0, 24), dtype=np.float32)]
    others = clouds(rng, 20, 24, 1, 200)

    encoder = Muvera(**settings)
    for category in ("query", "data"):
        batch = encoder(data, category)
        single = np.stack([encoder([cloud], category)[0] for cloud in data])
        assert np.array_equal(batch, single)

        # Shuffled among other documents
        mixed = data + others
        order = rng.permutation(len(mixed))
        outputs = encoder([mixed[x] for x in order], category)
        position = {x: i for i, x in enumerate(order)}
        assert np.array_equal(np.stack([outputs[position[x]] for x in range(len(data))]), batch)

        # Tiny groups split the batch differently
        small = Muvera(**settings)
        small.TOKENS = 7
        assert np.array_equal(small(data, category), batch)


def test_fillchunks():
    """
    Filling in several chunks of (partition, token) pairs gives the same vectors as in one.
    """

    data = clouds(np.random.default_rng(3), 10, 16, 1, 40)
    expected = Muvera(repetitions=3, hashes=7, projection=4, fill=True)(data, "data")

    encoder = Muvera(repetitions=3, hashes=7, projection=4, fill=True)
    encoder.CHUNK = 50
    assert np.array_equal(encoder(data, "data"), expected)


def test_fillquery():
    """
    Filling is documents-only: queries ignore it.
    """

    data = clouds(np.random.default_rng(4), 6, 16, 1, 10)
    filled = Muvera(hashes=6, fill=True)
    assert np.array_equal(filled(data, "query"), Muvera(hashes=6)(data, "query"))
    assert not np.array_equal(filled(data, "data"), Muvera(hashes=6)(data, "data"))


def test_edges():
    """
    Empty clouds, empty batches, input types and settings helpers.
    """

    rng = np.random.default_rng(6)
    cloud = clouds(rng, 1, 16)[0]
    encoder = Muvera(repetitions=2, hashes=2, projection=4, fill=True)

    # A cloud with no tokens encodes to zeros, in either category and with a final sketch
    empty = np.zeros((0, 16), dtype=np.float32)
    for category in ("query", "data"):
        outputs = encoder([empty, cloud], category)
        assert outputs.shape == (2, 32) and not outputs[0].any() and outputs[1].any()
        assert not Muvera(final=10, fill=True)([empty], category).any()

    # Empty batch: size known from the one dim seen or from final, unknown otherwise
    assert encoder([], "data").shape == (0, 32)
    assert Muvera(final=10)([], "query").shape == (0, 10)
    with pytest.raises(ValueError, match="empty batch"):
        Muvera()([], "query")

    # float64 arrays, lists and torch tensors are accepted as float32
    expected = encoder([cloud], "data")
    assert np.array_equal(encoder([cloud.astype(np.float64)], "data"), expected)
    assert np.array_equal(encoder([torch.from_numpy(cloud)], "data"), expected)
    assert np.array_equal(encoder([cloud.tolist()], "data"), expected)

    # Settings
    assert encoder.dimensions(16) == 2 * 4 * 4 and Muvera(projection=None).dimensions(7) == 20 * 32 * 7 and Muvera(final=9).dimensions(7) == 9
    assert json.loads(json.dumps(encoder.config)) == {"repetitions": 2, "hashes": 2, "projection": 4, "seed": 42, "fill": True, "final": None}
    assert repr(encoder) == "Muvera(repetitions=2, hashes=2, projection=4, seed=42, fill=True, final=None, device='cpu')"
    assert Muvera(repetitions=np.int64(3)).config["repetitions"] == 3


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"repetitions": 0}, ValueError),
        ({"repetitions": -1}, ValueError),
        ({"repetitions": 2.0}, TypeError),
        ({"repetitions": True}, TypeError),
        ({"hashes": -1}, ValueError),
        ({"hashes": 17}, ValueError),
        ({"hashes": "5"}, TypeError),
        ({"projection": 0}, ValueError),
        ({"projection": -4}, ValueError),
        ({"projection": 1.5}, TypeError),
        ({"final": 0}, ValueError),
        ({"final": 8.0}, TypeError),
        ({"seed": -1}, ValueError),
        ({"seed": None}, TypeError),
        ({"fill": 1}, TypeError),
        ({"fill": "yes"}, TypeError),
        ({"device": "nodevice"}, ValueError),
    ],
)
def test_settings(settings, error):
    """
    Bad settings raise errors naming the setting.
    """

    name = next(iter(settings))
    with pytest.raises(error, match=name):
        Muvera(**settings)


def test_inputs():
    """
    Bad inputs raise clear errors.
    """

    encoder = Muvera()
    cloud = np.ones((3, 8), dtype=np.float32)

    with pytest.raises(ValueError, match="category"):
        encoder([cloud], "document")
    with pytest.raises(ValueError, match="2-D"):
        encoder([np.ones(8, dtype=np.float32)], "data")
    with pytest.raises(ValueError, match="2-D"):
        encoder([np.ones((2, 3, 8), dtype=np.float32)], "data")
    with pytest.raises(ValueError, match="dim 6, expected 8"):
        encoder([cloud, np.ones((3, 6), dtype=np.float32)], "query")
    with pytest.raises(ValueError, match="single"):
        encoder(cloud, "query")
    with pytest.raises(ValueError, match="NaN or infinite"):
        encoder([cloud, np.full((2, 8), np.nan, dtype=np.float32)], "data")
    with pytest.raises(ValueError, match="NaN or infinite"):
        encoder([np.full((2, 8), np.inf, dtype=np.float32)], "data")
    with pytest.raises(TypeError, match="numeric"):
        encoder([[["a", "b"]]], "data")
    with pytest.raises(ValueError, match="at least 1 column"):
        encoder([np.ones((3, 0), dtype=np.float32)], "data")
