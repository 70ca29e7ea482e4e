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

from txtai_muvera.glue.api import Application, InvalidDocumentError

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


def free():
    # A free local port for a server
    import socket  # pylint: disable=C0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """
    A real txtai API server (uvicorn, API_CLASS=txtai_muvera.glue.api.API, default settings) over an index of 20 documents.
    Yields its base URL; the server must still be running at the end of the module.
    """

    if not FASTAPI:
        pytest.skip("txtai[api] extra not installed (pip install 'txtai[api]')")

    # pylint: disable=C0415
    import requests

    folder = tmp_path_factory.mktemp("server")
    with open(folder / "api.yml", "w", encoding="utf-8") as f:
        yaml.safe_dump(configuration(checkpoint, folder / "index"), f)

    port = free()
    env = {**environment(), "CONFIG": str(folder / "api.yml"), "API_CLASS": "txtai_muvera.glue.api.API"}
    command = [sys.executable, "-m", "uvicorn", "txtai.api:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log = open(folder / "server.log", "wb")  # pylint: disable=R1732
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert process.poll() is None, (folder / "server.log").read_text(errors="replace")[-3000:]
            try:
                requests.get(f"{url}/count", timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.2)

        documents = [{"id": str(i), "text": text} for i, text in enumerate(corpus(20, 3))]
        assert requests.post(f"{url}/add", json=documents, timeout=60).status_code == 200
        assert requests.get(f"{url}/index", timeout=60).status_code == 200
        yield url

        assert process.poll() is None, (folder / "server.log").read_text(errors="replace")[-3000:]
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def snapshot(url, where="1 = 1"):
    """
    Index count, database row count and the {id: text} rows matching where (at most 250, the API's limit).
    """

    import requests  # pylint: disable=C0415

    count = requests.get(f"{url}/count", timeout=60).json()
    rows = requests.get(f"{url}/search", params={"query": "select count(*) from txtai", "limit": 1}, timeout=60).json()[0]["count(*)"]
    query = f"select id, text from txtai where {where}"
    content = {row["id"]: row["text"] for row in requests.get(f"{url}/search", params={"query": query, "limit": 250}, timeout=60).json()}
    return count, rows, content


def test_document_size_limit(server):
    # A document over muvera.maxdocument (262,144 characters by default) is refused with 413 before it is buffered: the batch
    # around it changes nothing, not even through a later /upsert; one of exactly the limit is taken
    import requests  # pylint: disable=C0415

    from txtai_muvera.glue.api import MAXDOCUMENT

    before = snapshot(server)
    for text in ["music " * (MAXDOCUMENT // 6 + 1), "x" * 20_000_000]:
        start = time.monotonic()
        response = requests.post(f"{server}/add", json=[{"id": "small", "text": "music travel"}, {"id": "big", "text": text}], timeout=120)
        assert response.status_code == 413 and "'big'" in response.json()["detail"] and f"{MAXDOCUMENT:,}" in response.json()["detail"]
        assert time.monotonic() - start < 30
        assert requests.get(f"{server}/upsert", timeout=60).status_code == 200
        assert snapshot(server) == before

    # Other fields count too: the whole document is stored
    response = requests.post(f"{server}/add", json=[{"id": "meta", "text": "music", "notes": "y" * (MAXDOCUMENT + 1)}], timeout=60)
    assert response.status_code == 413
    assert requests.get(f"{server}/upsert", timeout=60).status_code == 200 and snapshot(server) == before

    # Every string value counts, the id too
    text = ("weather " * (MAXDOCUMENT // 8 + 1))[: MAXDOCUMENT - len("limit")]
    assert requests.post(f"{server}/add", json=[{"id": "limit", "text": text}], timeout=60).status_code == 200
    assert requests.get(f"{server}/upsert", timeout=60).status_code == 200
    count, rows, content = snapshot(server, "id = 'limit'")
    assert count == rows == before[0] + 1 and content == {"limit": text}
    assert requests.post(f"{server}/delete", json=["limit"], timeout=60).json() == ["limit"]


def test_document_size_setting(checkpoint, tmp_path):
    # muvera: {maxdocument: N} sets the limit (null: none); a bad value fails at startup, naming it
    config = configuration(checkpoint, tmp_path / "index")
    application = Application({**config, "muvera": {"maxdocument": 100}})
    with pytest.raises(InvalidDocumentError, match="more than 100 characters"):
        application.add([{"id": "a", "text": "x" * 101}])
    assert application.documents is None
    application.add([{"id": "a", "text": "x" * 99}])

    assert Application({**config, "muvera": {"maxdocument": None}}).maxdocument is None
    for value in ["big", 0, -5, 1.5, True]:
        with pytest.raises(ValueError, match=f"muvera.maxdocument {value!r} "):
            Application({**config, "muvera": {"maxdocument": value}})


def test_large_batch(server):
    # 10,000 documents in one /add and one /upsert, then deleted in one /delete
    import requests  # pylint: disable=C0415

    before = snapshot(server)
    documents = [{"id": f"b{i}", "text": text} for i, text in enumerate(corpus(10_000, 4))]
    assert requests.post(f"{server}/add", json=documents, timeout=600).status_code == 200
    assert requests.get(f"{server}/upsert", timeout=600).status_code == 200

    sample = [0, 1, 4_999, 9_998, 9_999]
    count, rows, content = snapshot(server, "id in (" + ", ".join(f"'b{i}'" for i in sample) + ")")
    assert count == rows == before[0] + 10_000
    assert content == {f"b{i}": documents[i]["text"] for i in sample}

    deleted = requests.post(f"{server}/delete", json=[x["id"] for x in documents], timeout=600).json()
    assert len(deleted) == 10_000 and snapshot(server) == before


def test_malformed_bodies(server):
    # Bodies that are not a JSON list of documents get a 4xx; nothing changes and the server keeps serving
    import requests  # pylint: disable=C0415

    before = snapshot(server)
    bodies = [
        ("/add", b"\x00\xff\xfe garbage \x80", "application/json"),
        ("/add", b'[{"id": "p", "text": "plain"}]', "text/plain"),
        ("/add", b'[{"id": "o", "text": "octets"}]', "application/octet-stream"),
        ("/add", b'{"id": "d", "text": "a dict, not a list"}', "application/json"),
        ("/add", b"[1, 2, 3]", "application/json"),
        ("/add", b'"text"', "application/json"),
        ("/add", b'[{"id": "t", "text": "truncated"', "application/json"),
        ("/add", b"", "application/json"),
        ("/add", b"[" * 100_000, "application/json"),
        ("/delete", b'{"ids": ["0"]}', "application/json"),
        ("/delete", b"\xff\xfe", "application/json"),
        ("/reindex", b"not json", "application/json"),
    ]
    for route, body, kind in bodies:
        response = requests.post(f"{server}{route}", data=body, headers={"Content-Type": kind}, timeout=60)
        assert 400 <= response.status_code < 500, (route, body[:40], kind, response.status_code, response.text[:200])

    assert requests.get(f"{server}/upsert", timeout=60).status_code == 200
    assert snapshot(server) == before

    # Still up and writable
    assert requests.post(f"{server}/add", json=[{"id": "after", "text": "music travel"}], timeout=60).status_code == 200
    assert requests.get(f"{server}/upsert", timeout=60).status_code == 200
    assert snapshot(server, "id = 'after'")[2] == {"after": "music travel"}
    assert requests.post(f"{server}/delete", json=["after"], timeout=60).json() == ["after"]
    assert snapshot(server) == before


def test_concurrent_writers(server):
    # 4 writer threads, each over ids of its own, /add + /upsert (new and replaced documents) and /delete for a while, and a
    # searcher: no 5xx, every write answers 200, each /delete deletes what the thread's own record says exists, and at the
    # end the index holds exactly what the successful calls leave. TXTAI_MUVERA_STRESS_SECONDS sets the duration (10 s)
    # pylint: disable=C0415
    import random
    import threading

    import requests

    seconds = float(os.environ.get("TXTAI_MUVERA_STRESS_SECONDS", "10"))
    before = snapshot(server)
    statuses, errors, references, stop = [], [], [{} for _ in range(4)], threading.Event()
    lock = threading.Lock()

    def record(response):
        with lock:
            statuses.append(response.status_code)
        return response

    def writer(thread):
        rng, reference, session = random.Random(thread), references[thread], requests.Session()
        try:
            while not stop.is_set():
                if rng.random() < 0.6 or not reference:
                    batch = {f"w{thread}-{rng.randrange(40)}": " ".join(rng.choices(WORDS, k=rng.randint(3, 10))) for _ in range(rng.randint(1, 8))}
                    documents = [{"id": uid, "text": text} for uid, text in batch.items()]
                    assert record(session.post(f"{server}/add", json=documents, timeout=120)).status_code == 200
                    assert record(session.get(f"{server}/upsert", timeout=120)).status_code == 200
                    reference.update(batch)
                else:
                    ids = rng.sample([f"w{thread}-{x}" for x in range(40)], rng.randint(1, 6))
                    response = record(session.post(f"{server}/delete", json=ids, timeout=120))
                    assert response.status_code == 200
                    assert sorted(response.json()) == sorted(x for x in ids if x in reference), (ids, response.json())
                    for uid in ids:
                        reference.pop(uid, None)
        except BaseException as error:  # pylint: disable=W0718
            errors.append(repr(error))
            stop.set()

    def searcher():
        rng, session = random.Random(99), requests.Session()
        try:
            while not stop.is_set():
                query = " ".join(rng.choices(WORDS, k=3))
                results = record(session.get(f"{server}/search", params={"query": query, "limit": 5}, timeout=120)).json()
                assert all(isinstance(x["text"], str) for x in results), results
                counted = record(session.get(f"{server}/search", params={"query": "select count(*) from txtai"}, timeout=120)).json()
                assert counted[0]["count(*)"] >= before[0]
        except BaseException as error:  # pylint: disable=W0718
            errors.append(repr(error))
            stop.set()

    threads = [threading.Thread(target=writer, args=(x,)) for x in range(4)] + [threading.Thread(target=searcher)]
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(300)

    assert not errors, errors[:3]
    assert not [x for x in statuses if x >= 500] and len(statuses) > 20, statuses[-10:]

    expected = {uid: text for reference in references for uid, text in reference.items()}
    count, rows, content = snapshot(server, "id like 'w%'")
    assert count == rows == before[0] + len(expected)
    assert content == expected

    # Cleaned up for whatever runs next on the server
    requests.post(f"{server}/delete", json=list(expected), timeout=120)
    assert snapshot(server) == before
