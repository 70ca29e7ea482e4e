"""
Bad-input matrix: every row of the table in docs/reliability.md, through Embeddings and the lower layers
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from safetensors.torch import save_file
from txtai import Embeddings

from txtai_muvera import FDEIndex, MuveraScoring, SearchOptions, TokenStore
from txtai_muvera.core.models.hub import CheckpointError

from checkpoints import build_pylate_checkpoint

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()

MUVERA = {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}


def corpus(size, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(size)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=32)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("other"), hidden=32, dim=16, document_length=32, seed=5)


def create(checkpoint, content=True, **options):
    return Embeddings(sparse={"path": checkpoint, "muvera": dict(MUVERA), **options}, content=content)


def cause(error):
    """
    txtai's factories wrap a constructor's exception in ImportError("Unable to resolve ..."): the real error is its cause.
    """

    return error.__cause__ if isinstance(error, ImportError) and error.__cause__ else error


@pytest.fixture(scope="module")
def index(checkpoint):
    embeddings = create(checkpoint)
    embeddings.index([(f"d{i}", text, None) for i, text in enumerate(corpus(30))])
    return embeddings


def snapshot(embeddings, queries):
    return embeddings.count(), embeddings.batchsearch(queries, 5)


@pytest.mark.parametrize(
    "text", ["", "   \n\t ", "\x00\x01\x7f\ufffd\xff binary-looking \x1b[0m", "retrieval 中文 русский عربى हिन्दी 🙂 mixed", "music " * 200000]
)
def test_odd_strings_index(checkpoint, text):
    # Empty, whitespace-only, binary-looking, mixed-script and 1 MB documents are indexed: they keep at least the special tokens
    embeddings = create(checkpoint)
    embeddings.index([("odd", text, None)] + [(f"d{i}", x, None) for i, x in enumerate(corpus(5))])
    assert embeddings.count() == 6
    assert "odd" in {row["id"] for row in embeddings.search("music retrieval", 6)}

    tokens = embeddings.scoring.store
    assert all(len(tokens.get(uid)) > 0 for uid in tokens.ids)


def test_lone_surrogate(index):
    # Strings that are not valid Unicode (lone surrogates, e.g. from bytes decoded with surrogateescape) are refused by txtai's
    # SQLite database before any encoder runs
    queries = corpus(2, 1)
    before = snapshot(index, queries)
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        index.upsert([("bad", "caf\udce9", None)])
    assert snapshot(index, queries) == before


@pytest.mark.parametrize("data, kind", [(12345, "int"), (b"bytes", "bytes"), (1.5, "float"), ({"text": 12345}, "int")])
def test_non_string_document(index, data, kind):
    queries = corpus(2, 1)
    before = snapshot(index, queries)

    # The error names the document id and the type, and the searchable index is unchanged
    with pytest.raises(TypeError, match=f"Document 'bad' has {kind} text"):
        index.upsert([("new", "music history", None), ("bad", data, None)])

    assert snapshot(index, queries) == before


def test_dict_documents(index):
    queries = corpus(2, 1)
    before = snapshot(index, queries)

    # txtai serialises dict documents to JSON in its database first: bytes values fail there, before any encoder
    with pytest.raises(TypeError, match="Object of type bytes is not JSON serializable"):
        index.upsert([("bad", {"text": b"bytes"}, None)])

    # A dict without a text field is stored in txtai's database but never indexed (txtai streams only text/object fields)
    index.upsert([("notext", {"title": "music"}, None)])
    assert snapshot(index, queries) == before


def test_bad_document_deep_in_large_batch(checkpoint):
    # Past 5 x 1,024 documents txtai's encoding queue is full: the error still reaches the caller and nothing hangs
    embeddings = create(checkpoint, batch=1024)
    embeddings.index(corpus(20))
    queries = corpus(2, 2)
    before = snapshot(embeddings, queries)

    documents = [(f"n{i}", text, None) for i, text in enumerate(corpus(6500, 3))]
    documents[6000] = ("bad", {"text": 42}, None)
    with pytest.raises(TypeError, match="Document 'bad' has int text"):
        embeddings.upsert(documents)

    assert snapshot(embeddings, queries) == before

    # Later passes still line up with txtai's ids: new documents are found with their own text
    embeddings.upsert([("late", "weather sports food travel", None)])
    assert embeddings.search("weather sports food travel", 1)[0]["id"] == "late"


def test_none_documents(checkpoint):
    # txtai drops None documents before any encoder sees them, and the database skips them too: one small call works
    embeddings = create(checkpoint)
    embeddings.index(["music history", None, "weather sports"])
    assert embeddings.count() == 2
    assert {row["text"] for row in embeddings.search("weather sports", 2)} == {"music history", "weather sports"}

    # txtai's own id offset counts them (3); the index takes its ids from the offset txtai passes, like the database, so a
    # later upsert lands where searches find it (0.1.0 lost it: its ids drifted by the number of None documents)
    assert embeddings.config["offset"] == 3
    embeddings.upsert([("x", "food travel", None)])
    assert embeddings.search("food travel", 1)[0]["id"] == "x"


def test_ids(checkpoint):
    # Duplicate ids in one call: txtai keeps both rows under one id; a later upsert of that id replaces both
    embeddings = create(checkpoint)
    embeddings.index([("a", "music history", None), ("a", "weather sports", None), ("b", "food travel", None)])
    assert embeddings.count() == 3
    assert [row["id"] for row in embeddings.search("music history", 3)].count("a") == 2
    embeddings.upsert([("a", "science token", None)])
    assert embeddings.count() == 2 and sorted(row["text"] for row in embeddings.search("select text from txtai where id = 'a'")) == ["science token"]

    # Missing ids (None): txtai numbers them by position
    embeddings = create(checkpoint)
    embeddings.index([(None, "music history", None), (None, "weather sports", None)])
    assert sorted(row["id"] for row in embeddings.search("music", 2)) == ["0", "1"]


def test_queries(index):
    # Empty, whitespace-only and very long queries are encoded (long ones cut at the query length)
    for query in ["", "   ", "music " * 20000]:
        results = index.search(query, 3)
        assert len(results) == 3 and all(row["score"] > 0 for row in results)

    # Non-string queries: the encoder names the position and the type
    with pytest.raises(TypeError, match=r"texts\[0\] is int, expected str"):
        index.scoring.batchsearch([42], 3)


def test_limits(index, checkpoint):
    query = corpus(1, 4)[0]

    # txtai: limit 0 or None means its default (3); a negative limit gives no results with content enabled
    assert len(index.search(query, 0)) == 3 and len(index.search(query, None)) == 3
    assert index.search(query, -1) == []

    # Without content the limit reaches our index: negative or non-integer limits are refused by name
    embeddings = create(checkpoint, content=False)
    embeddings.index(corpus(10))
    with pytest.raises(ValueError, match="limit must be a non-negative integer, got -1"):
        embeddings.search(query, -1)

    scoring = index.scoring
    assert scoring.batchsearch([query], 0) == [[]]
    with pytest.raises(ValueError, match="limit must be a non-negative integer, got 2.5"):
        scoring.batchsearch([query], 2.5)
    for candidates in [0, -3, 1.5, True, "100"]:
        with pytest.raises(ValueError, match=f"candidates must be a positive integer, got {candidates!r}"):
            SearchOptions(candidates=candidates)

    def search(limit, candidates):
        with scoring.searching(SearchOptions(candidates=candidates)):
            return scoring.batchsearch([query], limit)[0]

    # Fewer candidates than limit: limit candidates are re-ranked, so limit results come back
    assert len(search(8, 2)) == 8
    assert [uid for uid, _ in search(8, 2)] == [uid for uid, _ in search(8, 8)]


def test_checkpoints(tmp_path, checkpoint):
    def fails(path, error, match):
        with pytest.raises((error, ImportError)) as info:
            create(path).index(["music"])
        assert isinstance(cause(info.value), error) and match in str(cause(info.value)), str(cause(info.value))

    # Missing: not a late-interaction checkpoint, so txtai's own sparse encoder reports the path
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        create(str(tmp_path / "missing-folder")).index(["music"])

    # Partial: weights missing
    partial = shutil.copytree(checkpoint, tmp_path / "partial")
    os.remove(partial / "model.safetensors")
    fails(str(partial), CheckpointError, "incomplete: expected model.safetensors")

    # Corrupt config
    corrupt = shutil.copytree(checkpoint, tmp_path / "corrupt")
    (corrupt / "config_sentence_transformers.json").write_text("{oops", encoding="utf-8")
    fails(str(corrupt), CheckpointError, "Invalid JSON")

    # Corrupt weights
    weights = shutil.copytree(checkpoint, tmp_path / "weights")
    (weights / "model.safetensors").write_bytes(b"\x00" * 64)
    fails(str(weights), ValueError, "Cannot load checkpoint")

    # Wrong dims: a head that does not follow the backbone's hidden size, and a config that does not match the weights
    head = shutil.copytree(checkpoint, tmp_path / "head")
    save_file({"linear.weight": torch.randn(16, 24)}, str(head / "1_Dense" / "model.safetensors"))
    fails(str(head), ValueError, "projection head 0 with weight shape (16, 24), expected (dim, 32)")

    hidden = shutil.copytree(checkpoint, tmp_path / "hidden")
    config = json.loads((hidden / "config.json").read_text(encoding="utf-8"))
    config["hidden_size"] = 48
    (hidden / "config.json").write_text(json.dumps(config), encoding="utf-8")
    fails(str(hidden), ValueError, "Cannot load checkpoint")


def saved(checkpoint, path, documents=20):
    embeddings = create(checkpoint)
    embeddings.index(corpus(documents))
    embeddings.save(str(path))
    return str(path)


def test_index_folders(checkpoint, other, tmp_path):
    def fails(path, error, match):
        with pytest.raises(error, match=match):
            Embeddings().load(str(path))

    # Truncated token store
    path = saved(checkpoint, tmp_path / "truncated")
    tokens = os.path.join(path, "scoring", "tokens", "tokens.npy")
    with open(tokens, "r+b") as f:
        f.truncate(os.path.getsize(tokens) // 2)
    fails(path, ValueError, "Corrupt or truncated token store file|Checksum mismatch in token store file")

    # Corrupted faiss file
    path = saved(checkpoint, tmp_path / "faiss")
    with open(os.path.join(path, "scoring", "fdes", "index.faiss"), "r+b") as f:
        f.write(b"garbage!")
    fails(path, ValueError, "Corrupt FDE index file")

    # Corrupted header
    path = saved(checkpoint, tmp_path / "header")
    with open(os.path.join(path, "scoring", "header.json"), "w", encoding="utf-8") as f:
        f.write("{")
    fails(path, ValueError, "Corrupt txtai-muvera index header")

    # Missing part
    path = saved(checkpoint, tmp_path / "missing")
    shutil.rmtree(os.path.join(path, "scoring", "tokens"))
    fails(path, FileNotFoundError, "Token store directory not found")

    # Another version of the format, for each header
    for part, name in [
        ("", "txtai-muvera index at .* has version 99"),
        ("tokens", "token store at .* has version 99"),
        ("fdes", "FDE index at .* has version 99"),
    ]:
        path = saved(checkpoint, tmp_path / f"version-{part or 'index'}")
        file = os.path.join(path, "scoring", part, "header.json")
        with open(file, encoding="utf-8") as f:
            header = json.load(f)
        header["version"] = 99
        with open(file, "w", encoding="utf-8") as f:
            json.dump(header, f)
        fails(path, ValueError, name)

    # Counts that disagree between header and parts
    path = saved(checkpoint, tmp_path / "counts")
    file = os.path.join(path, "scoring", "header.json")
    with open(file, encoding="utf-8") as f:
        header = json.load(f)
    header["documents"] = 21
    with open(file, "w", encoding="utf-8") as f:
        json.dump(header, f)
    fails(path, ValueError, "inconsistent")

    # Scoring folder of an index built with a different model
    path, foreign = saved(checkpoint, tmp_path / "mine"), saved(other, tmp_path / "foreign")
    shutil.rmtree(os.path.join(path, "scoring"))
    shutil.copytree(os.path.join(foreign, "scoring"), os.path.join(path, "scoring"))
    fails(path, ValueError, "built with fingerprint")

    # Checkpoint at the configured path replaced by a different model after the index was saved
    moved = shutil.copytree(checkpoint, tmp_path / "moving")
    path = saved(str(moved), tmp_path / "replaced")
    shutil.rmtree(moved)
    shutil.copytree(other, moved)
    with pytest.raises(ValueError, match="this index was built with"):
        Embeddings().load(path)


def test_lower_layers():
    # Lower layers name the bad value too
    with pytest.raises(ValueError, match="Unknown token store dtype 'int4'"):
        TokenStore(16, "int4")
    store = TokenStore(4)
    store.add([1], [np.ones((2, 4))])
    with pytest.raises(ValueError, match=r"Ids already in the token store: \[1\]"):
        store.add([1], [np.ones((2, 4))])
    with pytest.raises(ValueError, match=r"Duplicate ids in batch: \[2\]"):
        store.add([2, 2], [np.ones((2, 4)), np.ones((1, 4))])
    with pytest.raises(ValueError, match=r"shape \(2, 5\), expected \(tokens, 4\)"):
        store.add([3], [np.ones((2, 5))])
    assert len(store) == 1

    index = FDEIndex(8)
    index.index([0, 1], np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match="Queries have 7 dimensions, index has 8"):
        index.search(np.ones((1, 7), np.float32), 2)
    with pytest.raises(ValueError, match=r"Ids already in the index: \[1\]"):
        index.add([1], np.ones((1, 8), np.float32))
    assert index.count() == 2

    with pytest.raises(ValueError, match="path must name a late-interaction checkpoint"):
        MuveraScoring({"muvera": MUVERA})
