"""
Registry module: makes `Embeddings(sparse=<late-interaction checkpoint>)` build a MUVERA index
"""

from txtai.scoring import ScoringFactory

from ..core.models import islateinteraction

# Class paths written into saved configs: public API, never rename
VECTORS = "txtai_muvera.LateVectors"
BACKEND = "txtai_muvera.MuveraIndex"

# Original txtai factory method, set while registered
ORIGINAL = {}


def register():
    """
    Registers the package with txtai. Idempotent. Afterwards a sparse scoring config whose path is a late-interaction checkpoint
    (and that names no vectors method of its own) is rewritten to use this package's class paths before txtai builds it; every
    other scoring config is left exactly as it is.
    """

    if ORIGINAL:
        return

    original = ScoringFactory.create

    def create(config, models=None):
        if islate(config):
            rewrite(config)

        return original(config, models)

    ORIGINAL["create"] = original
    ScoringFactory.create = staticmethod(create)


def unregister():
    """
    Undoes `register`. Indexes already built keep working: their configs name the class paths explicitly.
    """

    if ORIGINAL:
        ScoringFactory.create = staticmethod(ORIGINAL.pop("create"))


def isregistered():
    """
    Checks if the package is registered with txtai.

    Returns:
        True if registered
    """

    return bool(ORIGINAL)


def islate(config):
    """
    Checks if a scoring config asks for a sparse index over a late-interaction checkpoint without naming a vectors method.

    Args:
        config: scoring config

    Returns:
        True if this package should handle it
    """

    return (
        isinstance(config, dict)
        and config.get("method") == "sparse"
        and config.get("vectormethod", "sentence-transformers") == "sentence-transformers"
        and isinstance(config.get("path"), str)
        and islateinteraction(config["path"])
    )


def rewrite(config):
    """
    Points a scoring config at this package's vectors model and index backend, in place, so the saved config names them.

    Args:
        config: scoring config
    """

    config["vectormethod"] = VECTORS
    if config.get("backend", "ivfsparse") == "ivfsparse":
        config["backend"] = BACKEND
