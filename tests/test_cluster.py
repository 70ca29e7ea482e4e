"""
txtai API cluster sharding: three shard servers and a cluster server on loopback, started from configs/cluster/ as shipped
(only the model path and the shard ports substituted). Merged results must equal one index over all documents.
"""

import os
import socket
import subprocess
import sys
import time

import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("txtai.api", reason="txtai API not installed: pip install txtai-muvera[api]")

# pylint: disable=C0413
from txtai import Embeddings

from texts import SENTENCES

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "cluster")

# Model path and shard urls named in the shipped files
MODEL = "neuml/colbert-muvera-micro"
SHARDS = ["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"]

QUERIES = ["what is late interaction", "a quick brown fox", "vector search with tokens", "reset my password"]


def port():
    """
    A free loopback port.
    """

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read(name, replacements):
    """
    Reads a shipped cluster config, substituting strings.
    """

    with open(os.path.join(CONFIGS, name), encoding="utf-8") as f:
        text = f.read()

    for original, value in replacements.items():
        assert original in text, f"{original} not in {name}"
        text = text.replace(original, value)

    return text


def serve(folder, config, number):
    """
    Starts `uvicorn txtai.api:app` in folder with config on a free loopback port.

    Returns:
        (process, url, log file)
    """

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "config.yml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(config)

    log = open(os.path.join(folder, "server.log"), "w", encoding="utf-8")  # pylint: disable=R1732
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "txtai.api:app", "--host", "127.0.0.1", "--port", str(number)],
        cwd=folder,
        env={**os.environ, "CONFIG": path},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, f"http://127.0.0.1:{number}", log


def wait(servers, timeout=240):
    """
    Waits until every server answers.
    """

    start = time.time()
    for process, url, log in servers:
        while True:
            if process.poll() is not None:
                log.flush()
                with open(log.name, encoding="utf-8") as f:
                    raise RuntimeError(f"{url} exited: {f.read()[-3000:]}")
            try:
                if requests.get(f"{url}/count", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.time() - start > timeout:
                raise TimeoutError(f"{url} did not start within {timeout}s")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(pylate_checkpoint, tmp_path_factory):
    """
    Three shards and a cluster server, as configs/cluster/ ships them.
    """

    folder = tmp_path_factory.mktemp("cluster")
    ports = [port() for _ in range(4)]
    servers = []
    try:
        for x in range(3):
            servers.append(serve(str(folder / f"shard{x}"), read("shard.yml", {MODEL: str(pylate_checkpoint)}), ports[x]))

        shards = {original: f"http://127.0.0.1:{number}" for original, number in zip(SHARDS, ports)}
        servers.append(serve(str(folder / "cluster"), read("cluster.yml", shards), ports[3]))
        wait(servers)
        yield servers[-1][1], [url for _, url, _ in servers[:3]]
    finally:
        for process, _, log in servers:
            process.terminate()
        for process, _, log in servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def test_cluster(cluster, pylate_checkpoint):
    url, shards = cluster
    documents = [{"id": f"doc{x}", "text": text} for x, text in enumerate(SENTENCES)]

    # Index through the cluster: documents spread over the shards by id
    requests.post(f"{url}/add", json=documents, timeout=60).raise_for_status()
    requests.get(f"{url}/index", timeout=300).raise_for_status()
    counts = [requests.get(f"{shard}/count", timeout=30).json() for shard in shards]
    assert sum(counts) == len(documents) and all(counts), counts
    assert requests.get(f"{url}/count", timeout=30).json() == len(documents)

    # One index over all documents, same settings
    single = Embeddings(sparse={"path": str(pylate_checkpoint), "method": "txtai_muvera.MuveraScoring", "terms": True, "candidates": 100}, content=True)
    single.index([(d["id"], d["text"], None) for d in documents])

    limit = 5
    for query in QUERIES:
        merged = requests.get(f"{url}/search", params={"query": query, "limit": limit}, timeout=60).json()
        expected = single.search(query, limit)
        assert [r["id"] for r in merged] == [r["id"] for r in expected], query
        assert [r["score"] for r in merged] == pytest.approx([r["score"] for r in expected], abs=1e-6)

    merged = requests.post(f"{url}/batchsearch", json={"queries": QUERIES, "limit": limit}, timeout=60).json()
    for results, expected in zip(merged, single.batchsearch(QUERIES, limit)):
        assert [r["id"] for r in results] == [r["id"] for r in expected]
        assert [r["score"] for r in results] == pytest.approx([r["score"] for r in expected], abs=1e-6)

    # Deletes reach the shard that holds the document
    deleted = requests.post(f"{url}/delete", json=["doc0", "doc1"], timeout=60).json()
    assert sorted(deleted) == ["doc0", "doc1"]
    single.delete(["doc0", "doc1"])
    query = QUERIES[0]
    merged = requests.get(f"{url}/search", params={"query": query, "limit": limit}, timeout=60).json()
    assert [r["id"] for r in merged] == [r["id"] for r in single.search(query, limit)]
    single.close()
