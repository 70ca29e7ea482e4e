"""
The house: the core never imports txtai, and the package registers itself whenever txtai is imported
"""

import subprocess
import sys

from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "txtai_muvera" / "core"


def run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_core_never_imports_txtai():
    # Importing every core module leaves txtai out of sys.modules
    modules = sorted(f"txtai_muvera.core.{path.stem}" for path in CORE.glob("*.py") if path.stem not in ("__init__", "pgvector"))
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({name!r})\n" for name in modules) + "print('txtai' in sys.modules)"
    assert run(code) == "False"

    # And no core source names it
    for path in CORE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import txtai\n" not in text and "from txtai " not in text and "from txtai." not in text, path


def test_registration_order():
    # Package first, txtai later: the hook installs itself when txtai imports its scoring factory
    assert run("import txtai_muvera, sys; a = 'txtai' in sys.modules; from txtai.scoring import ScoringFactory; print(a, txtai_muvera.isregistered(), ScoringFactory.create.__module__)") == "False True txtai_muvera.glue.registry"

    # txtai first, package later: registered at import
    code = "from txtai.scoring import ScoringFactory; f = ScoringFactory.create; import txtai_muvera; print(txtai_muvera.isregistered(), ScoringFactory.create is not f)"
    assert run(code) == "True True"
