"""
Documents module: reads JSONL, CSV/TSV or a folder of text files into txtai documents, naming the file and line of any bad row
"""

import csv
import json
import os
import stat

from ...core.text import encodable
from .errors import UsageError

# Input formats and the file extensions that select them
FORMATS = {"jsonl": (".jsonl", ".ndjson", ".json"), "csv": (".csv", ".tsv")}

# File extensions read from a folder
TEXTS = (".txt", ".md")


class Documents:
    """
    Iterable of txtai documents, `{"id": ..., "text": ..., other fields}`, read from a file or folder. Every pass re-reads the
    input, so a first pass (`check`) validates it and counts documents before any encoding starts.

    Inputs:
      - JSONL: one JSON object per line with "text" (a non-empty string), optional "id" (default: the row's position) and
        "title" (prepended to the text, also kept); every other field is kept as content. Blank lines are skipped.
      - CSV or TSV: a header row with a "text" column, optional "id" and "title" columns; other columns are kept as content.
      - folder: one document per .txt or .md file (recursive, sorted), id = path relative to the folder.
    """

    def __init__(self, path, kind=None):
        """
        Creates a reader.

        Args:
            path: input file or folder
            kind: "jsonl", "csv" or "folder", detected from path when None
        """

        self.path = str(path)
        if not os.path.exists(self.path):
            raise UsageError(f"Input not found: {self.path}")

        self.kind = kind if kind else detect(self.path)
        if self.kind == "folder" and not os.path.isdir(self.path):
            raise UsageError(f"Input {self.path} is not a folder")
        if self.kind != "folder" and os.path.isdir(self.path):
            raise UsageError(f"Input {self.path} is a folder, not a {self.kind} file")

    def __iter__(self):
        seen = {}
        for location, document in self.rows():
            uid = document["id"]
            key = json.dumps(uid)
            if key in seen:
                raise UsageError(f"{location}: duplicate id {uid!r} (first seen at {seen[key]})")
            seen[key] = location
            yield document

    def check(self, progress=None):
        """
        Reads the whole input once, raising a UsageError at the first bad row.

        Args:
            progress: optional function that wraps the rows read, e.g. in a progress bar

        Returns:
            number of documents
        """

        count = sum(1 for _ in (progress(self) if progress else self))
        if not count:
            raise UsageError(f"No documents in {self.path}")

        return count

    def rows(self):
        """
        Yields (location, document) pairs, where location is "file:line" (or the file for folders).
        """

        if self.kind == "folder":
            yield from self.readfolder()
        elif self.kind == "csv":
            yield from self.readcsv()
        else:
            yield from self.readjsonl()

    def readjsonl(self):
        """
        Yields (location, document) pairs from a JSONL file.
        """

        with open(self.path, "rb") as f:
            position = 0
            for line, row in enumerate(lines(f, self.path), start=1):
                if not row.strip():
                    continue

                location = f"{self.path}:{line}"
                try:
                    row = json.loads(row)
                except ValueError as error:
                    raise UsageError(f"{location}: invalid JSON ({error})") from error

                if not isinstance(row, dict):
                    raise UsageError(f"{location}: expected a JSON object with a 'text' field, got {type(row).__name__}")

                yield location, document(row, position, location)
                position += 1

    def readcsv(self):
        """
        Yields (location, document) pairs from a CSV (or, for .tsv, tab separated) file with a header row.
        """

        delimiter = "\t" if self.path.lower().endswith(".tsv") else ","
        with open(self.path, "rb") as f:
            reader = csv.DictReader(lines(f, self.path), delimiter=delimiter)
            fields = reader.fieldnames
            if fields is None:
                raise UsageError(f"No documents in {self.path}: the file is empty")
            if "text" not in fields:
                raise UsageError(f"{self.path}:1: header has no 'text' column (columns: {', '.join(fields)})")

            for position, row in enumerate(reader):
                location = f"{self.path}:{reader.line_num}"
                if None in row:
                    raise UsageError(f"{location}: more fields than the {len(fields)} columns of the header")
                if None in row.values():
                    raise UsageError(f"{location}: fewer fields than the {len(fields)} columns of the header")

                yield location, document(row, position, location)

    def readfolder(self):
        """
        Yields (file, document) pairs, one per .txt or .md file under the folder.
        """

        files = []
        for root, dirs, names in os.walk(self.path):
            dirs.sort()
            files.extend(os.path.join(root, name) for name in sorted(names) if name.lower().endswith(TEXTS))

        for file in files:
            # The id is the file name: it must be text that txtai's database can store
            if not encodable(file):
                raise UsageError(f"{ascii(file)}: file name is not UTF-8 (rename the file)")

            # Only regular files (or links to them) are read: opening a FIFO or a device would block or never end
            try:
                mode = os.stat(file).st_mode
            except OSError as error:
                raise UsageError(f"{file}: cannot read ({error.strerror})") from error
            if not stat.S_ISREG(mode):
                raise UsageError(f"{file}: not a regular file ({kind(mode)})")

            try:
                with open(file, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError as error:
                raise UsageError(f"{file}: not UTF-8 text ({error.reason} at byte {error.start})") from error

            uid = os.path.relpath(file, self.path).replace(os.sep, "/")
            yield file, document({"id": uid, "text": text}, uid, file)


def detect(path):
    """
    Detects the input format of path.

    Args:
        path: file or folder

    Returns:
        "folder", "jsonl" or "csv"
    """

    if os.path.isdir(path):
        return "folder"

    for kind, extensions in FORMATS.items():
        if path.lower().endswith(extensions):
            return kind

    raise UsageError(f"Unknown input format for {path}: expected a folder, .jsonl/.ndjson/.json or .csv/.tsv (or pass --format)")


def document(row, position, location):
    """
    Builds a txtai document from a row.

    Args:
        row: dict read from the input
        position: default id, the row's position
        location: file:line, for errors

    Returns:
        dict with id, text and the other fields
    """

    text, title = row.get("text"), row.get("title")
    if not isinstance(text, str):
        raise UsageError(f"{location}: 'text' must be a string, got {'nothing' if text is None else type(text).__name__}")
    if title is not None and not isinstance(title, str):
        raise UsageError(f"{location}: 'title' must be a string, got {type(title).__name__}")

    # The title is part of what gets encoded; it is also kept as its own field
    text = f"{title.strip()}\n{text}" if title and title.strip() else text
    if not text.strip():
        raise UsageError(f"{location}: empty text")

    uid = row.get("id")
    if uid is None or uid == "":
        uid = position
    elif not isinstance(uid, (str, int)) or isinstance(uid, bool):
        raise UsageError(f"{location}: 'id' must be a string or an integer, got {type(uid).__name__}")

    # JSON escapes can spell lone surrogates ("\udce9"): txtai's SQLite database cannot store them, and would fail after the model loads
    for field, value in [("id", uid), ("text", text), *row.items()]:
        if not encodable(value):
            raise UsageError(f"{location}: '{field}' holds a lone surrogate (not valid Unicode text)")

    return {**{k: v for k, v in row.items() if k not in ("id", "text")}, "id": uid, "text": text}


def kind(mode):
    """
    Names the type of a file that is not a regular file.

    Args:
        mode: st_mode

    Returns:
        str
    """

    kinds = [
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ]
    return next((name for check, name in kinds if check(mode)), "not a regular file")


def lines(handle, path):
    """
    Yields the lines of a binary file as text. Each line is decoded on its own, so a decoding error names the exact line.

    Args:
        handle: file open in binary mode
        path: file path

    Returns:
        lines
    """

    for line, data in enumerate(handle, start=1):
        try:
            # A byte order mark at the start of the file is not part of the first row
            yield data.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as error:
            raise UsageError(f"{path}:{line}: not UTF-8 text ({error.reason} at byte {error.start})") from error


def queries(path):
    """
    Reads queries from a file: JSONL rows with "text" (and optional "id"), or plain text with one query per line.

    Args:
        path: queries file

    Returns:
        list of (id, query)
    """

    if not os.path.isfile(path):
        raise UsageError(f"Queries file not found: {path}")

    results = []
    with open(path, "rb") as f:
        for line, row in enumerate(lines(f, path), start=1):
            if not row.strip():
                continue

            if path.lower().endswith((".jsonl", ".ndjson")):
                try:
                    row = json.loads(row)
                except ValueError as error:
                    raise UsageError(f"{path}:{line}: invalid JSON ({error})") from error
                if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                    raise UsageError(f"{path}:{line}: expected a JSON object with a non-empty 'text' string")
                results.append((row.get("id", len(results)), row["text"]))
            else:
                results.append((len(results), row.strip()))

    if not results:
        raise UsageError(f"No queries in {path}")

    return results
