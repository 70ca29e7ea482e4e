"""
Concurrency: many threads searching one loaded index get the same results as one thread
"""

import threading

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from txtai import Embeddings

from txtai_muvera import FDEIndex, Reranker, SearchOptions, TokenStore, maxsim_flat

from checkpoints import build_pylate_checkpoint

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()

MUVERA = {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}

THREADS = 8


def corpus(size, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(size)]


def parallel(function, tasks):
    """
    Runs function over tasks on THREADS threads started together, several rounds each.
    """

    barrier = threading.Barrier(THREADS)

    def run(task):
        barrier.wait()
        return [function(task) for _ in range(3)]

    with ThreadPoolExecutor(THREADS) as executor:
        return list(executor.map(run, tasks))


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_lower_layers(kind):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 32)).astype(np.float32)
    index = FDEIndex(32, kind)
    index.index(np.arange(500), vectors)
    index.delete([3, 4, 5])

    store = TokenStore(8)
    matrices = [rng.standard_normal((rng.integers(1, 6), 8)).astype(np.float32) for _ in range(500)]
    store.add(np.arange(500), matrices)
    queries = rng.standard_normal((THREADS, 32)).astype(np.float32)
    qtokens = [rng.standard_normal((4, 8)).astype(np.float32) for _ in range(THREADS)]

    def search(x):
        scores, ids = index.search(queries[x : x + 1], 20, efsearch=64)
        exact = maxsim_flat(qtokens[x], *store.gather(ids[0][ids[0] >= 0]))
        return ids.tolist(), scores.tolist(), exact.tolist()

    expected = [search(x) for x in range(THREADS)]
    for x, rounds in enumerate(parallel(search, range(THREADS))):
        assert all(result == expected[x] for result in rounds)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    checkpoint = build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=32)
    embeddings = Embeddings(sparse={"path": checkpoint, "muvera": dict(MUVERA)}, content=True)
    embeddings.index(corpus(300))
    path = str(tmp_path_factory.mktemp("index") / "index")
    embeddings.save(path)

    # Memory-mapped token store, as a server loads it
    loaded = Embeddings()
    loaded.load(path)
    return loaded


def test_scoring_without_lock(loaded):
    # Query encoding, FDE search and MaxSim re-ranking (everything below txtai's database) run in parallel without a lock
    queries = corpus(THREADS, 1)
    scoring = loaded.scoring
    expected = [scoring.batchsearch([query], 10) for query in queries]
    for x, rounds in enumerate(parallel(lambda x: scoring.batchsearch([queries[x]], 10), range(THREADS))):
        assert all(result == expected[x] for result in rounds)


def test_embeddings_without_content(tmp_path_factory):
    # No document database: Embeddings.search is safe from many threads without a lock
    checkpoint = build_pylate_checkpoint(tmp_path_factory.mktemp("plain"), hidden=32, dim=16, document_length=32)
    embeddings = Embeddings(sparse={"path": checkpoint, "muvera": dict(MUVERA)})
    embeddings.index([(f"d{i}", text, None) for i, text in enumerate(corpus(200))])
    queries = corpus(THREADS, 4)
    expected = [embeddings.search(query, 10) for query in queries]
    for x, rounds in enumerate(parallel(lambda x: embeddings.search(queries[x], 10), range(THREADS))):
        assert all(result == expected[x] for result in rounds)


def test_embeddings_with_lock(loaded):
    # With content, txtai shares one SQLite cursor and a temporary batch table between calls: searches need a lock (txtai's
    # Application takes its lock around every search for the same reason). Results then match one thread's
    queries, lock = corpus(THREADS, 5), threading.Lock()
    expected = [loaded.search(query, 10) for query in queries]

    def search(x):
        with lock:
            return loaded.search(queries[x], 10)

    for x, rounds in enumerate(parallel(search, range(THREADS))):
        assert all(result == expected[x] for result in rounds)


def test_options_per_thread(loaded):
    # Per-call options live in thread-local storage: threads with different candidate counts do not see each other's, even
    # while other threads run full Reranker calls (under the database lock) with other counts
    reranker, lock, scoring = Reranker(loaded), threading.Lock(), loaded.scoring
    queries = corpus(THREADS, 2)
    candidates = [1 + x for x in range(THREADS)]

    def search(query, count=None):
        with scoring.searching(SearchOptions(candidates=count)):
            return scoring.search(query, 5)

    expected = [(search(query, count), search(query)) for query, count in zip(queries, candidates)]

    def run(x):
        with scoring.searching(SearchOptions(candidates=candidates[x])):
            with lock:
                reranker("music history", 5, candidates=candidates[(x + 1) % THREADS])
            ranked = scoring.search(queries[x], 5)
        return ranked, scoring.search(queries[x], 5)

    for x, rounds in enumerate(parallel(run, range(THREADS))):
        assert all(result == expected[x] for result in rounds)


def test_searches_with_writer_under_lock(loaded):
    # Writes are not safe next to searches: with one lock around every call (what txtai's Application does), readers see
    # either the index before or after each write, never a mix
    lock = threading.Lock()
    query = corpus(1, 3)[0]
    with lock:
        before = loaded.search(query, 5)

    results, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            with lock:
                results.append((loaded.count(), loaded.search(query, 5)))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for x in range(5):
        with lock:
            loaded.upsert([(f"new{x}", f"music history science {x}", None)])
    stop.set()
    for thread in threads:
        thread.join()

    with lock:
        loaded.delete([f"new{x}" for x in range(5)])
        assert loaded.search(query, 5) == before

    assert results and all(count in range(300, 306) for count, _ in results)


def test_application_threads(tmp_path_factory):
    # Embeddings.search with content is not thread-safe in txtai 9.14 (one shared SQLite cursor: ProgrammingError or a
    # segmentation fault). The package's Application (as txtai's) takes its lock around every search and write, so threads
    # may call it freely: searches run next to writes, each sees the index before or after a write
    # pylint: disable=C0415
    from txtai_muvera.glue.api import Application

    checkpoint = build_pylate_checkpoint(tmp_path_factory.mktemp("app"), hidden=32, dim=16, document_length=32)
    sparse = {"path": checkpoint, "method": "txtai_muvera.MuveraScoring", "terms": True, "muvera": dict(MUVERA)}
    application = Application({"writable": True, "embeddings": {"content": True, "sparse": sparse}})
    application.add([{"id": str(i), "text": text} for i, text in enumerate(corpus(100, 6))])
    application.index()

    queries, errors, stop = corpus(THREADS, 7), [], threading.Event()

    def reader(x):
        while not stop.is_set():
            try:
                results = application.search(queries[x], 5)
                assert len(results) == 5 and application.count() in range(100, 106)
            except Exception as error:  # pylint: disable=W0718
                errors.append(repr(error))

    threads = [threading.Thread(target=reader, args=(x,)) for x in range(THREADS - 1)]
    for thread in threads:
        thread.start()
    for x in range(5):
        application.add([{"id": f"new{x}", "text": f"music history science {x}"}])
        application.upsert()
    stop.set()
    for thread in threads:
        thread.join()

    assert not errors, errors[:3]
    assert application.count() == 105
