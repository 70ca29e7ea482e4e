"""
Indexes saved by txtai-muvera 0.1.0 still load
"""

import json
import os
import shutil
import subprocess
import sys

from pathlib import Path

import numpy as np

from txtai import Embeddings

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "index-0.1.0"


def copy(tmp_path):
    """
    Copies the 0.1.0 index and points its config at the fixture's checkpoint.
    """

    path = shutil.copytree(FIXTURE / "index", tmp_path / "index")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config["scoring"]["path"] = str(FIXTURE / "checkpoint")
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def test_loads_after_import(tmp_path):
    import txtai_muvera  # pylint: disable=C0415,W0611

    embeddings = Embeddings()
    embeddings.load(str(copy(tmp_path)))

    # Same results as 0.1.0 gave, served by the new scoring class; the config is upgraded
    expected = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
    results = embeddings.batchsearch(["music history", "weather food"], 3)
    assert [[row["id"] for row in result] for result in results] == [[uid for uid, _ in result] for result in expected]
    assert np.allclose([row["score"] for result in results for row in result], [score for result in expected for _, score in result], atol=1e-6)
    assert embeddings.config["scoring"]["method"] == "txtai_muvera.MuveraScoring" and "vectormethod" not in embeddings.config["scoring"]

    # Writes and a save in the new format work
    embeddings.upsert([("n", "music music history", None)])
    embeddings.save(str(tmp_path / "saved"))
    reloaded = Embeddings()
    reloaded.load(str(tmp_path / "saved"))
    assert reloaded.count() == 9 and reloaded.search("music music history", 1)[0]["id"] == "n"


def test_fails_clearly_without_import(tmp_path):
    # In a fresh process that never imported txtai_muvera, txtai resolves the 0.1.0 class path and gets a message
    path = copy(tmp_path)
    code = f"from txtai import Embeddings\ntry:\n    Embeddings().load({str(path)!r})\nexcept Exception as e:\n    print(repr(e.__cause__ or e))\n"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}).stdout
    assert "saved by txtai-muvera 0.1.0" in output and "import txtai_muvera" in output
