"""
BEIR module
"""

import csv
import json
import logging
import os

logger = logging.getLogger(__name__)


class BEIR:
    """
    A retrieval dataset in the BEIR layout: `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`) and
    `qrels/<split>.tsv` (`query-id`, `corpus-id`, `score`, with or without a header row).

    Only queries present in the qrels are kept, as BEIR's evaluation does. Qrels keep every judgment, graded and zero: metrics
    count a document as relevant when its score is > 0, and a query judged with zeros only still counts (it scores 0).
    """

    def __init__(self, name, corpus, queries, qrels):
        """
        Creates a dataset.

        Args:
            name: dataset name
            corpus: dict of document id -> document text (title and text joined by a space)
            queries: dict of query id -> query text
            qrels: dict of query id -> {document id: int relevance}
        """

        self.name, self.corpus, self.queries, self.qrels = name, corpus, queries, qrels

    @classmethod
    def load(cls, path, split="test", maxqueries=None, maxdocs=None):
        """
        Loads a BEIR-layout folder.

        Args:
            path: folder holding corpus.jsonl, queries.jsonl and qrels/<split>.tsv
            split: qrels split name
            maxqueries: keep only the first maxqueries judged queries (quick runs)
            maxdocs: keep only the first maxdocs documents, always keeping the documents the kept queries judge (quick runs)

        Returns:
            BEIR
        """

        path = str(path)
        files = {
            "corpus": os.path.join(path, "corpus.jsonl"),
            "queries": os.path.join(path, "queries.jsonl"),
            "qrels": os.path.join(path, "qrels", f"{split}.tsv"),
        }
        missing = [file for file in files.values() if not os.path.isfile(file)]
        if missing:
            raise FileNotFoundError(f"{path} is not a BEIR-layout folder: missing {', '.join(missing)}")

        for name, value in [("maxqueries", maxqueries), ("maxdocs", maxdocs)]:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")

        qrels = readqrels(files["qrels"])
        queries = {uid: text for uid, text in readqueries(files["queries"]) if uid in qrels}

        # Judged queries missing from queries.jsonl can not be searched: a broken folder, not a quiet skip
        absent = [uid for uid in qrels if uid not in queries]
        if absent:
            raise ValueError(f"{files['qrels']} judges {len(absent)} queries missing from {files['queries']}: {absent[:5]}")

        if maxqueries:
            queries = dict(list(queries.items())[:maxqueries])
            qrels = {uid: qrels[uid] for uid in queries}

        # Judged documents are kept first when the corpus is capped, so every qrel can still be found
        judged = {docid for judgments in qrels.values() for docid in judgments} if maxdocs else None
        # A repeated document id keeps its first text: qrels judge the id, so one document per id is what they can score
        # (BEIR's own loader keeps one too). Said once, with the count, since the corpus then has fewer documents than lines
        corpus, extra, duplicates = {}, {}, []
        for uid, text in readcorpus(files["corpus"]):
            if uid in corpus or uid in extra:
                duplicates.append(uid)
                continue
            if not maxdocs or uid in judged:
                corpus[uid] = text
            elif len(extra) < maxdocs:
                extra[uid] = text

        if duplicates:
            logger.warning("%s repeats %d document ids (first %r): the first text of each is kept", files["corpus"], len(duplicates), duplicates[0])

        if maxdocs:
            corpus.update(list(extra.items())[: max(maxdocs - len(corpus), 0)])

        return cls(os.path.basename(os.path.normpath(path)), corpus, queries, qrels)

    def documents(self):
        """
        Documents in corpus order, as txtai (id, text, tags) tuples.

        Returns:
            list of tuples
        """

        return [(uid, text, None) for uid, text in self.corpus.items()]

    def __repr__(self):
        return f"BEIR({self.name!r}, documents={len(self.corpus)}, queries={len(self.queries)}, judgments={sum(len(x) for x in self.qrels.values())})"


def readcorpus(path):
    """
    Reads corpus.jsonl. Document text is the title, a space and the text; a missing or empty title leaves the text alone.

    Args:
        path: corpus.jsonl

    Returns:
        iterator of (id, text)
    """

    for line, row in readjsonl(path):
        if "_id" not in row:
            raise ValueError(f"{path} line {line} has no _id")
        title, text = row.get("title") or "", row.get("text") or ""
        yield str(row["_id"]), f"{title} {text}" if title else text


def readqueries(path):
    """
    Reads queries.jsonl.

    Args:
        path: queries.jsonl

    Returns:
        iterator of (id, text)
    """

    for line, row in readjsonl(path):
        if "_id" not in row or not isinstance(row.get("text"), str):
            raise ValueError(f"{path} line {line} needs an _id and a text string")
        yield str(row["_id"]), row["text"]


def readjsonl(path):
    """
    Reads a JSON lines file, skipping blank lines.

    Args:
        path: file

    Returns:
        iterator of (line number, dict)
    """

    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if text.strip():
                try:
                    yield line, json.loads(text)
                except ValueError as error:
                    raise ValueError(f"{path} line {line} is not JSON: {error}") from error


def readqrels(path):
    """
    Reads a qrels TSV file: query id, document id, integer score. A first row whose score is not an integer is a header.

    Args:
        path: qrels file

    Returns:
        dict of query id -> {document id: int score}, in file order
    """

    qrels = {}
    with open(path, encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise ValueError(f"{path} line {line} needs query-id, corpus-id and score separated by tabs, got {row!r}")

            try:
                score = int(float(row[2]))
            except ValueError as error:
                # Header row
                if line == 1:
                    continue
                raise ValueError(f"{path} line {line} has a non-numeric score {row[2]!r}") from error

            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = score

    return qrels
