"""
Registry module: makes `Embeddings(sparse=<late-interaction checkpoint>)` build a MuveraScoring index
"""

import importlib.abc
import importlib.util
import sys

from ..core.models import islateinteraction

# Class path of the scoring class, written into saved configs: public API, never rename
CLASS = "txtai_muvera.MuveraScoring"

# Class paths 0.1.0 wrote into saved configs (txtai's Sparse scoring with this package's vectors and backend)
LEGACY = ("txtai_muvera.LateVectors", "txtai_muvera.MuveraIndex")

# Module whose import installs the hook when txtai is imported after this package
FACTORY = "txtai.scoring.factory"

# Original txtai factory method, set while registered
ORIGINAL = {}


def register():
    """
    Registers the package with txtai. Idempotent. Afterwards a sparse scoring config whose path is a late-interaction checkpoint
    (and that names no vectors method of its own), or a config saved by 0.1.0, is rewritten to this package's scoring class
    before txtai builds it; every other scoring config is left exactly as it is.

    txtai is not imported here: when it has not been imported yet, the hook is installed the moment txtai imports its scoring
    factory, so `import txtai_muvera.core` stays free of txtai.
    """

    if ORIGINAL:
        return

    if FACTORY not in sys.modules:
        if not any(isinstance(finder, Finder) for finder in sys.meta_path):
            sys.meta_path.insert(0, Finder())
        return

    factory = sys.modules[FACTORY].ScoringFactory
    original = factory.create

    def create(config, models=None):
        rewrite(config)
        return original(config, models)

    ORIGINAL["create"] = (factory, original)
    factory.create = staticmethod(create)


def unregister():
    """
    Undoes `register`. Indexes already built keep working: their configs name the scoring class explicitly.
    """

    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, Finder)]
    if ORIGINAL:
        factory, original = ORIGINAL.pop("create")
        factory.create = staticmethod(original)


def isregistered():
    """
    Checks if the package is registered with txtai.

    Returns:
        True if registered (or registering as soon as txtai is imported)
    """

    return bool(ORIGINAL) or any(isinstance(finder, Finder) for finder in sys.meta_path)


def rewrite(config):
    """
    Points a scoring config at this package's scoring class, in place, so the saved config names it. Handles the one-line
    form (`sparse=<late-interaction checkpoint>`) and configs saved by 0.1.0; leaves every other config untouched.

    Args:
        config: scoring config
    """

    if not isinstance(config, dict):
        return

    if config.get("method") == "sparse" and config.get("vectormethod") in LEGACY:
        # 0.1.0 index: same settings and files, now served by the scoring class
        config.pop("vectormethod")
        config["backend"] = "faiss"
        config["method"], config["terms"] = CLASS, True

    elif (
        config.get("method") == "sparse"
        and config.get("vectormethod", "sentence-transformers") == "sentence-transformers"
        and isinstance(config.get("path"), str)
        and islateinteraction(config["path"])
    ):
        config.pop("vectormethod", None)
        if config.get("backend", "ivfsparse") == "ivfsparse":
            config["backend"] = "faiss"
        config["method"], config["terms"] = CLASS, True


class Finder(importlib.abc.MetaPathFinder):
    """
    Import hook that registers the package right after txtai imports its scoring factory.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname != FACTORY:
            return None

        # Find the real module spec with the other finders, then register once its code has run
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                register()

            spec.loader.exec_module = exec_module

        return spec
