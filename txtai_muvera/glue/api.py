"""
API module: txtai's Application and API with writes that change all or nothing, saved atomically

txtai 9.14's `Application` (which `txtai.api.API` extends) runs `add`, `index`, `upsert`, `delete` and `reindex` under one lock,
but a write that raises leaves its document buffer pointing at a closed file (every later `/add` fails with "write to closed
file" until a restart) and the index half-changed (a later `/delete` then saves the loss), and it saves with txtai's own
`Embeddings.save`, which writes `config.json` and the database in place (a killed server restarts with more database rows than
indexed documents). These classes keep txtai's behaviour otherwise:

- documents that cannot be stored (lone surrogates, numbers as text) are refused by `add`, before they enter the buffer, and so
  are documents larger than `muvera: {maxdocument: N}` characters (HTTP 413; 262,144 by default, null for no limit);
- `index`, `upsert` and `delete` go through `txtai_muvera.transaction`: one that raises leaves the index exactly as it was,
  and the buffer is emptied, so the next write starts clean;
- every save is `durable.save` (a crash leaves the previous save or the new one), startup loads with `durable.load`; a save
  that fails puts the instance back to the last save, so memory and disk agree.

Serve with `CONFIG=configs/api.yml API_CLASS=txtai_muvera.glue.api.API uvicorn "txtai.api:app"`.
"""

import os

from txtai.app import Application as Base, ReadOnlyError, ReindexDisabledError
from txtai.embeddings import Embeddings

from ..core import files
from ..core.text import encodable
from . import durable, transaction

# txtai's API needs the api extra (fastapi); the Application works without it
try:
    from fastapi import HTTPException
    from txtai.api import API as BaseAPI

    FASTAPI = True
except ImportError:
    FASTAPI = False


# Largest document `add` takes by default, in characters of its strings. The model cuts a document at its document length
# (512 tokens for most ColBERT checkpoints, 8,192 for the longest, about 3 to 50 KB of text), but its tokenizer reads the whole
# text first, under the write lock that every request waits for: a 20 MB document held it for 110 s. 256 Ki characters is 5
# times the longest useful document and about a second of tokenizing at worst
MAXDOCUMENT = 262144


class InvalidDocumentError(ValueError):
    """
    A document that no write could store: refused before it is buffered.
    """


class DocumentTooLargeError(InvalidDocumentError):
    """
    A document larger than the API's `maxdocument` setting: refused before it is buffered or encoded.
    """


class Writes:
    """
    Mixin over txtai's Application: all-or-nothing writes, atomic saves, a document buffer that survives failures.
    """

    def __init__(self, config, loaddata=True):
        # A bad setting fails at startup, before the index is loaded
        self.maxdocument = maxdocument(self.read(config))
        super().__init__(config, loaddata)

    def indexes(self, loaddata):
        """
        Initializes the embeddings index. A saved index at `path` (no cloud) is loaded with `durable.load`: an interrupted save is
        repaired first, and the load never sees a save half swapped in.

        Args:
            loaddata: load existing index data if True, else only create the configured index
        """

        path, cloud = self.config.get("path"), self.config.get("cloud")
        if loaddata and path and not cloud:
            # A read-only folder that a dead save left moved aside is read from the previous save's folder
            with files.reading(path) as folder:
                exists = Embeddings().exists(folder)

            if exists:
                config = self.config.get("embeddings")
                config = self.resolveconfig(config.copy()) if config else None
                overrides = {key: config[key] for key in ["functions", "transform"] if key in config} if config else None
                self.embeddings = durable.load(path, config=overrides)
                self.attach()
                return

        super().indexes(loaddata)

    def add(self, documents):
        """
        Adds a batch of documents for indexing, refusing the whole batch if one document cannot be stored or is larger than
        the `maxdocument` setting.

        Args:
            documents: list of {id: value, text: value} (or txtai's other document forms)

        Returns:
            unmodified input documents
        """

        documents = list(documents)
        check(documents, self.maxdocument)

        # Under the lock: txtai looks for an index before it takes the lock, and a failed write replaces the index under it
        with self.lock:
            return super().add(documents)

    def index(self):
        """
        Builds a new index from the buffered documents. The index being replaced stays in place until the new one is built and
        saved: a failure leaves it, in memory and on disk, as it was.
        """

        if not self.config.get("writable"):
            raise ReadOnlyError("Attempting to index a read-only index (writable != True)")
        if getattr(self, "cluster", None):
            super().index()
            return

        # Checked under the lock: a request that waited for it may find the buffer written and emptied by another one
        with self.lock:
            if self.embeddings and self.documents:
                previous = self.embeddings
                try:
                    # A new instance from the configuration, as txtai's Application does
                    self.indexes(False)
                    if self.embeddings.isweighted():
                        self.embeddings.score(self.documents)
                    self.embeddings.index(self.documents)
                    self.save()
                except BaseException:
                    if self.embeddings is not previous:
                        self.embeddings.close()
                    self.embeddings = previous
                    self.attach()
                    raise
                finally:
                    self.reset()

                # The replaced index is released now (memory-mapped files, database), not whenever it is collected
                if previous is not None and previous is not self.embeddings:
                    previous.close()

    def upsert(self):
        """
        Upserts the buffered documents. An upsert that raises leaves the index as it was; the buffer is emptied either way.
        """

        if not self.config.get("writable"):
            raise ReadOnlyError("Attempting to upsert a read-only index (writable != True)")
        if getattr(self, "cluster", None):
            super().upsert()
            return

        # Checked under the lock: a request that waited for it may find the buffer written and emptied by another one
        with self.lock:
            if self.embeddings and self.documents:
                try:
                    self.write(transaction.upsert, self.embeddings.upsert, self.documents)
                finally:
                    self.reset()

    def delete(self, ids):
        """
        Deletes ids. A delete that raises leaves the index as it was.

        Args:
            ids: list of ids to delete

        Returns:
            ids deleted
        """

        if not self.config.get("writable"):
            raise ReadOnlyError("Attempting to delete from a read-only index (writable != True)")
        if getattr(self, "cluster", None):
            return super().delete(ids)

        # Checked under the lock: a failed write replaces the instance while it holds the lock
        with self.lock:
            if self.embeddings:
                return self.write(transaction.delete, self.embeddings.delete, ids)

        return None

    def reindex(self, config, function=None):
        """
        Recreates the index with a new configuration (txtai's reindex), saved atomically. txtai's reindex cannot be undone in
        memory: if it or the save fails, the instance is loaded again from the last save.

        Args:
            config: new config
            function: optional function to prepare content for indexing
        """

        if not self.config.get("writable"):
            raise ReadOnlyError("Attempting to reindex a read-only index (writable != True)")
        if not self.config.get("reindex"):
            raise ReindexDisabledError("Attempting to reindex with reindexing disabled (reindex != True)")
        if getattr(self, "cluster", None):
            super().reindex(config, function)
            return

        if self.embeddings:
            with self.lock:
                function = self.function(function) if function and isinstance(function, str) else function
                try:
                    self.embeddings.reindex(config, function)
                except BaseException:
                    self.reload()
                    raise

                self.save(recover=True)

    def write(self, guarded, plain, argument):
        """
        Runs one write and saves it. The write goes through the transaction helper; an index whose database cannot be rolled
        back (not SQLite) runs the plain txtai call and is loaded again from the last save if it fails.

        Args:
            guarded: transaction function, called as guarded(embeddings, argument)
            plain: txtai method, called as plain(argument)
            argument: documents or ids

        Returns:
            what the write returns
        """

        try:
            result = guarded(self.embeddings, argument)
        except NotImplementedError:
            try:
                result = plain(argument)
            except BaseException:
                self.reload()
                raise

        self.save(recover=True)
        return result

    def save(self, recover=False):
        """
        Saves the index at `path` with `durable.save` (txtai's own save for cloud storage). If the save fails and recover is set,
        the instance is loaded again from the last save, so that what searches see is what is on disk.

        Args:
            recover: reload the last save after a failed save
        """

        path = self.config.get("path")
        if not path:
            return

        try:
            if self.config.get("cloud"):
                self.embeddings.save(path, self.config.get("cloud"))
            else:
                durable.save(self.embeddings, path)
        except BaseException:
            if recover:
                self.reload()
            raise

    def reload(self):
        """
        Replaces the instance with the last save at `path` (a new instance from the configuration when nothing was saved yet).
        The old instance is closed first: its open database would otherwise keep the saved one locked. An index without a
        `path` has no save to go back to and is left as it is.
        """

        if not self.config.get("path"):
            return

        if self.embeddings is not None:
            self.embeddings.close()
            self.embeddings = None

        self.indexes(True)

    def reset(self):
        """
        Empties the document buffer. txtai's buffer closes its file when read: a buffer left after a failed write would make
        every later add fail with "write to closed file".
        """

        if self.documents is not None:
            name = getattr(self.documents.documents, "name", None)
            if name and os.path.exists(name):
                os.remove(name)
            self.documents = None

    def attach(self):
        """
        Points the pipelines that search the index (extractor, rag, reranker) at the current instance, as txtai's `indexes`
        does.
        """

        for key in ["extractor", "rag"]:
            pipeline = self.pipelines.get(key)
            config = self.config.get(key)
            if pipeline and config is not None and config.get("similarity") is None:
                pipeline.similarity = self.embeddings

        if "reranker" in self.pipelines:
            self.pipelines["reranker"].embeddings = self.embeddings


class Application(Writes, Base):
    """
    txtai Application with all-or-nothing writes and atomic saves.
    """


if FASTAPI:

    class API(Writes, BaseAPI):
        """
        txtai API with all-or-nothing writes and atomic saves: `API_CLASS=txtai_muvera.glue.api.API`. A batch that `/add` refuses
        answers 413 with the reason when a document is too large, else 422.
        """

        def add(self, documents):
            try:
                return super().add(documents)
            except DocumentTooLargeError as error:
                raise HTTPException(status_code=413, detail=str(error)) from error
            except InvalidDocumentError as error:
                raise HTTPException(status_code=422, detail=str(error)) from error


def maxdocument(config):
    """
    Reads the largest document size `add` takes from an application config: `muvera: {maxdocument: N}`.

    Args:
        config: application config dict

    Returns:
        characters, or None for no limit
    """

    settings = (config or {}).get("muvera") or {}
    if not isinstance(settings, dict):
        raise ValueError(f"muvera {settings!r} is not a mapping: expected settings such as {{maxdocument: {MAXDOCUMENT}}}")

    value = settings.get("maxdocument", MAXDOCUMENT)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"muvera.maxdocument {value!r} is not a document size: expected a positive number of characters, or null for no limit")

    return value


def check(documents, limit=None):
    """
    Checks that every document of a batch can be stored: no document is larger than limit, text must be a string (or None,
    which txtai skips) and no string may hold a lone surrogate (SQLite cannot encode it).

    Args:
        documents: list of documents
        limit: largest document in characters, None for no limit

    Raises:
        DocumentTooLargeError or InvalidDocumentError naming the first bad document
    """

    for position, document in enumerate(documents):
        uid, text = position, document
        if isinstance(document, dict):
            uid, text = document.get("id", position), document.get("text")
        elif isinstance(document, tuple) and document:
            uid, text = document[0], document[1] if len(document) > 1 else None
            text = text.get("text") if isinstance(text, dict) else text

        # Size first: a large document is refused before anything reads all of its text
        if limit is not None and size(document, limit) > limit:
            raise DocumentTooLargeError(
                f"Document {position} (id {ascii(uid)[:80]}) has more than {limit:,} characters, the muvera.maxdocument setting: split it "
                f"or raise the setting (the model reads only its document length of tokens)"
            )
        if isinstance(text, (bool, int, float)):
            raise InvalidDocumentError(f"Document {position} (id {uid!r}) has {type(text).__name__} text {text!r}, expected str")
        if not encodable(document):
            raise InvalidDocumentError(f"Document {position} (id {ascii(uid)}) holds a lone surrogate: not valid Unicode text")


def size(document, limit):
    """
    Counts the characters of a document's string values, id included (bytes of binary values), nested fields included, stopping
    once past limit. Field names do not count.

    Args:
        document: document in any of txtai's forms
        limit: count at which to stop

    Returns:
        characters counted, more than limit when the document is too large
    """

    # A stack, not recursion: a deeply nested JSON document must not raise RecursionError
    total, stack = 0, [document]
    while stack and total <= limit:
        value = stack.pop()
        if isinstance(value, (str, bytes)):
            total += len(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)

    return total
