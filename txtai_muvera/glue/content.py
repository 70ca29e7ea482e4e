"""
Content module: txtai's client content database (`content: postgresql://...`) for late-interaction indexes, reconnecting after a
lost connection
"""

from txtai.database import Client as TxtaiClient

# Conditional import
try:
    from sqlalchemy.exc import DBAPIError, PendingRollbackError

    SQLALCHEMY = True
except ImportError:
    SQLALCHEMY = False


class Client(TxtaiClient):
    """
    txtai's client database with one change: a read or write that finds the server connection lost (a server restart, a
    terminated backend) opens a new session and, for reads, runs once more. txtai's own client keeps one connection for its
    whole life: after a restart every later call fails (`PendingRollbackError`) until the process restarts.

    With a pgvector index in the same database, the write transactions of late-interaction indexes (`transaction`) commit the
    content session at the end of every successful write call, so nothing is pending when a connection is lost between calls,
    and a call that loses it midway is rolled back whole. With an index in files, content rows commit when the index is saved
    (so both stay at the same point): a connection lost with writes since the last save lost those rows on the server, while
    the index in memory still has them, so further writes and saves are refused until the index is reloaded. The new session
    has its own temporary tables (txtai's `batch` and `scores` are per connection), which is why the whole session is rebuilt
    rather than the connection revalidated.
    """

    def __init__(self, config):
        super().__init__(config)

        # Writes since the last save not yet committed (index in files), and whether a lost connection took such writes
        self.pending, self.broken = False, False

    def save(self, path):
        self.usable()
        super().save(path)
        self.pending = False

    def search(self, query, similarity=None, limit=None, parameters=None, indexids=False):
        return self.retry(super().search, query, similarity, limit, parameters, indexids)

    def ids(self, ids):
        return self.retry(super().ids, ids)

    def count(self):
        return self.retry(super().count)

    def retry(self, method, *args):
        """
        Runs a read, reconnecting and running it once more when the connection was lost.

        Args:
            method: bound read method
            args: its arguments

        Returns:
            the method's result
        """

        try:
            return method(*args)
        except Exception as error:  # pylint: disable=W0718
            if not self.connection or not lost(error):
                raise

        self.reconnect()
        return method(*args)

    def ping(self):
        """
        Makes sure the session's connection is alive before a write: reconnects when it was lost (a session left failed by an
        earlier error is rolled back first).
        """

        self.usable()
        if not self.connection:
            return

        try:
            if not self.connection.is_active:
                self.connection.rollback()
            self.connection.execute(statement("SELECT 1"))
        except Exception as error:  # pylint: disable=W0718
            if not lost(error):
                raise
            self.reconnect()
            self.usable()

    def reconnect(self):
        """
        Replaces the session with a new one on a new connection (uncommitted work is gone with the old connection anyway).
        """

        try:
            self.connection.close()
        except Exception:  # pylint: disable=W0718
            # The old connection is dead: closing it may fail, and nothing is lost
            pass

        if self.engine:
            self.engine.dispose()
        self.session()
        self.broken, self.pending = self.broken or self.pending, False

    def usable(self):
        """
        Refuses writes after a lost connection took uncommitted content rows with it.
        """

        if self.broken:
            raise ConnectionError(
                "The connection to the content database was lost with content rows written since the last save: the server "
                "dropped them, while the index in memory still has them. Load the index again from its last save."
            )


def statement(text):
    """
    Args:
        text: SQL text

    Returns:
        executable SQLAlchemy text clause
    """

    # pylint: disable=C0415
    from sqlalchemy import text as textsql

    return textsql(text)


def lost(error):
    """
    Checks if an error means the database connection is gone (or the session was left unusable by such an error).

    Args:
        error: exception

    Returns:
        True if reconnecting is the remedy
    """

    if not SQLALCHEMY:
        return False
    if isinstance(error, PendingRollbackError):
        return True
    if isinstance(error, DBAPIError):
        return bool(error.connection_invalidated) or type(error.orig).__name__ in ("OperationalError", "InterfaceError", "AdminShutdown")

    return False
