"""
API: one bad document never takes the writes down, a failed write changes nothing, a killed server restarts consistent
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from txtai_muvera.glue.api import Application

from checkpoints import build_pylate_checkpoint

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()

MUVERA = {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}

FASTAPI = importlib.util.find_spec("fastapi") is not None


def corpus(size, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(size)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=32)


def configuration(checkpoint, path):
    # configs/api.yml with a tiny model and an absolute index path
    return {
        "path": str(path),
        "writable": True,
        "embeddings": {
            "content": True,
            "sparse": {"path": checkpoint, "method": "txtai_muvera.MuveraScoring", "terms": True, "muvera": dict(MUVERA), "candidates": 100},
        },
    }


def consistent(application):
    """
    Index count, database rows and the ids a search can reach all agree.
    """

    embeddings = application.embeddings
    rows = embeddings.search("select id from txtai", 10000)
    return embeddings.count() == len(rows), sorted(str(row["id"]) for row in rows)


@pytest.mark.skipif(not FASTAPI, reason="txtai[api] extra not installed (pip install 'txtai[api]')")
def test_bad_documents_over_the_api(checkpoint, tmp_path, monkeypatch):
    # pylint: disable=C0415
    from fastapi.testclient import TestClient
    from txtai.api import app

    # The shipped configs/api.yml, with the tiny model and an index path under tmp_path
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "api.yml"), encoding="utf-8") as f:
        shipped = yaml.safe_load(f)
    shipped["path"] = str(tmp_path / "index")
    shipped["embeddings"]["sparse"]["path"] = checkpoint
    config = tmp_path / "api.yml"
    config.write_text(yaml.safe_dump(shipped), encoding="utf-8")
    monkeypatch.setenv("CONFIG", str(config))
    monkeypatch.setenv("API_CLASS", "txtai_muvera.glue.api.API")

    documents = corpus(20, 0)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/add", json=[{"id": str(i), "text": text} for i, text in enumerate(documents)]).status_code == 200
        assert client.get("/index").status_code == 200
        before = client.get("/search", params={"query": documents[0], "limit": 3}).json()

        # A document that fails inside the write (a token list of numbers breaks txtai's database) after a replacement of id 0:
        # the upsert fails whole, id 0 keeps its text
        assert client.post("/add", json=[{"id": "0", "text": "replaced"}, {"id": "x", "text": [1, 2]}]).status_code == 200
        assert client.get("/upsert").status_code == 500
        assert client.get("/count").json() == 20
        assert client.get("/search", params={"query": documents[0], "limit": 3}).json() == before

        # Documents no write could store are refused with the batch, naming them: nothing is buffered
        response = client.post("/add", json=[{"id": "a", "text": "music"}, {"id": "bad", "text": 12345}])
        assert response.status_code == 422 and "'bad'" in response.json()["detail"]
        response = client.post("/add", content='[{"id": "s", "text": "caf\\udce9"}]', headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and "surrogate" in response.json()["detail"]

        # Later writes work ("write to closed file" before), and deletes save no loss
        assert client.post("/add", json=[{"id": "new", "text": "weather sports travel"}]).status_code == 200
        assert client.get("/upsert").status_code == 200
        assert client.post("/delete", json=["1"]).json() == ["1"]
        assert client.get("/count").json() == 20

    # Restarted: the saved index holds every write that succeeded and nothing else
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/count").json() == 20
        rows = client.get("/search", params={"query": "select id, text from txtai where id in ('0', '1', 'new', 'x')"}).json()
        assert {row["id"]: row["text"] for row in rows} == {"0": documents[0], "new": "weather sports travel"}


def test_failed_writes_change_nothing(checkpoint, tmp_path):
    # Python side of the same class: upsert, delete and index that raise leave the index and the saved copy as they were
    path = tmp_path / "index"
    application = Application(configuration(checkpoint, path))
    documents = corpus(20, 1)
    application.add([{"id": str(i), "text": text} for i, text in enumerate(documents)])
    application.index()
    expected = consistent(application)
    assert expected[0] and len(expected[1]) == 20

    # bytes in a field: txtai's database fails to serialise it after the replaced rows were deleted
    application.add([{"id": "0", "text": "replaced"}, {"id": "b", "text": "fine", "blob": b"\x00"}])
    with pytest.raises(TypeError):
        application.upsert()
    assert consistent(application) == expected
    assert application.documents is None

    with pytest.raises(TypeError):
        application.add([{"id": "0", "text": "replaced"}, {"id": "b", "text": "fine", "blob": b"\x00"}])
        application.index()
    assert consistent(application) == expected

    # The next writes work and are saved
    application.add([{"id": "n", "text": "music travel"}])
    application.upsert()
    assert application.delete(["0"]) == ["0"]
    restarted = Application(configuration(checkpoint, path))
    assert consistent(restarted) == (True, sorted(set(expected[1]) - {"0"} | {"n"}))
    restarted.embeddings.close()


# Child: writes through an Application with a saved path, the server's write path without HTTP. After its first saved write it
# kills itself with SIGKILL at the n-th flush to disk of a saved part (files.sync runs once per part saved, before its rename)
WRITER = """
import importlib, json, os, signal, sys
from txtai_muvera.core import files
module, name = sys.argv[1].rsplit(".", 1)
Application = getattr(importlib.import_module(module), name)
config, crash = json.load(open(sys.argv[2])), int(sys.argv[3])
application = Application(config)
calls, sync = [], files.sync
def crashing(path):
    calls.append(path)
    if len(calls) == crash:
        os.kill(os.getpid(), signal.SIGKILL)
    sync(path)
x = 0
while True:
    application.add([{"id": f"w{x}-{i}", "text": f"music history travel {i}"} for i in range(20)])
    application.upsert()
    application.delete([f"w{x}-{i}" for i in range(0, 20, 2)])
    files.sync = crashing
    x += 1
"""


def environment():
    tests = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([root, tests, os.environ.get("PYTHONPATH", "")])}


def killed(checkpoint, tmp_path, cls, crashes):
    """
    Runs a writing Application that kills itself inside a save, at each crash point, and restarts it; returns the
    consistency of each restart.
    """

    path = tmp_path / "index"
    config = configuration(checkpoint, path)
    application = Application(config)
    application.add([{"id": str(i), "text": text} for i, text in enumerate(corpus(20, 2))])
    application.index()
    application.embeddings.close()
    with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f)

    results = []
    for crash in crashes:
        child = subprocess.run(
            [sys.executable, "-c", WRITER, cls, str(tmp_path / "config.json"), str(crash)],
            capture_output=True,
            env=environment(),
            timeout=600,
            check=False,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]

        restarted = Application(config)
        results.append(consistent(restarted)[0])
        restarted.embeddings.close()

    return results


def test_killed_server_restarts_consistent(checkpoint, tmp_path):
    # SIGKILL at each flush of a save's parts (upsert save, then delete save): every restart has as many database rows as
    # indexed documents. txtai's Application (its own save, in place) restarts inconsistent at every one of them
    assert all(killed(checkpoint, tmp_path, "txtai_muvera.glue.api.Application", [1, 2, 3, 4]))
