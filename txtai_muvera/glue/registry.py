"""
Registry module: makes `Embeddings(sparse=<late-interaction checkpoint>)` build a MuveraScoring index
"""

import functools
import importlib.abc
import importlib.util
import sys

from ..core.models.checkpoint import islateinteraction

# Class path of the scoring class, written into saved configs: public API, never rename
CLASS = "txtai_muvera.MuveraScoring"

# Class paths 0.1.0 wrote into saved configs (txtai's Sparse scoring with this package's vectors and backend)
LEGACY = ("txtai_muvera.LateVectors", "txtai_muvera.MuveraIndex")

# txtai modules whose import installs a hook, and the hook: the scoring factory (late-interaction configs build this package's
# scoring class), the database factory (their PostgreSQL content database reconnects) and Embeddings (its write calls run as
# transactions). Hooks of modules imported after this package are installed the moment each module has run.
HOOKS = {"txtai.scoring.factory": "scoring", "txtai.database.factory": "database", "txtai.embeddings.base": "embeddings"}

# Originals of what the hooks replaced, while registered: (owner, attribute) -> original
ORIGINAL = {}


def register():
    """
    Registers the package with txtai. Idempotent. Afterwards:

    - a sparse scoring config whose path is a late-interaction checkpoint (and that names no vectors method of its own), or a
      config saved by 0.1.0, is rewritten to this package's scoring class before txtai builds it, and errors in its settings
      reach the caller as they are (not as txtai's "Unable to resolve scoring backend");
    - `Embeddings.index`, `upsert` and `delete` of a late-interaction instance run as transactions (`transaction`): a call that
      raises leaves the instance as it was, content rows included;
    - the PostgreSQL content database of a late-interaction instance is `content.Client`, which reconnects after a server restart;
    - `Embeddings.load` of a late-interaction instance with a pgvector index and content in the folder drops index rows without
      content rows (a writer that died before saving).

    Every other config and instance is left exactly as it is. txtai is not imported here: hooks of txtai modules not imported
    yet are installed the moment txtai imports them, so `import txtai_muvera.core` stays free of txtai.
    """

    for module in HOOKS:
        if module in sys.modules:
            install(module)

    if any(module not in sys.modules for module in HOOKS) and not any(isinstance(finder, Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, Finder())


def unregister():
    """
    Undoes `register`. Indexes already built keep working: their configs name the scoring class explicitly.
    """

    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, Finder)]
    for (owner, attribute), original in list(ORIGINAL.items()):
        setattr(owner, attribute, original)
    ORIGINAL.clear()


def isregistered():
    """
    Checks if the package is registered with txtai.

    Returns:
        True if registered (or registering as soon as txtai is imported)
    """

    return bool(ORIGINAL) or any(isinstance(finder, Finder) for finder in sys.meta_path)


def install(module):
    """
    Installs the hook of one imported txtai module, once.

    Args:
        module: module name, a key of HOOKS
    """

    kind, module = HOOKS[module], sys.modules[module]
    if kind == "scoring":
        replace(module.ScoringFactory, "create", staticmethod(scoringfactory(module.ScoringFactory.create)))
    elif kind == "database":
        replace(module.DatabaseFactory, "create", staticmethod(databasefactory(module.DatabaseFactory.create)))
    else:
        for name in ("index", "upsert", "delete"):
            replace(module.Embeddings, name, writer(name, getattr(module.Embeddings, name)))
        replace(module.Embeddings, "load", loader(module.Embeddings.load))


def replace(owner, attribute, value):
    """
    Replaces an attribute, keeping the original for `unregister`. Idempotent.

    Args:
        owner: class
        attribute: attribute name
        value: replacement
    """

    if (owner, attribute) not in ORIGINAL:
        ORIGINAL[(owner, attribute)] = owner.__dict__[attribute]
        setattr(owner, attribute, value)


def scoringfactory(original):
    """
    Wraps txtai's ScoringFactory.create: late-interaction configs build MuveraScoring directly, so that a bad setting raises its
    own error at the top instead of txtai's ImportError with the real error as its cause.

    Args:
        original: txtai's ScoringFactory.create

    Returns:
        create(config, models=None)
    """

    def create(config, models=None):
        rewrite(config)
        if isinstance(config, dict) and config.get("method") == CLASS:
            # pylint: disable=C0415
            from .scoring import MuveraScoring

            return MuveraScoring(config, models)

        return original(config, models)

    return create


def databasefactory(original):
    """
    Wraps txtai's DatabaseFactory.create: the content database of a late-interaction index on a database server is
    `content.Client`, txtai's client database that reconnects after a server restart.

    Args:
        original: txtai's DatabaseFactory.create

    Returns:
        create(config)
    """

    def create(config):
        content = config.get("content")
        if isinstance(content, str) and "://" in content and islate(config):
            # pylint: disable=C0415
            from .content import Client

            database = Client(config)
            config["content"] = content
            return database

        return original(config)

    return create


def writer(name, original):
    """
    Wraps one of txtai's Embeddings write methods: on a late-interaction instance the call runs as a transaction, so a call
    that raises leaves the instance as it was. Calls made inside a transaction (txtai's upsert deletes replaced ids through
    `delete`; an upsert into an empty instance runs `index`) and reindexing go straight to txtai.

    Args:
        name: index, upsert or delete
        original: txtai's method

    Returns:
        method
    """

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        # pylint: disable=C0415
        from . import transaction

        if transaction.active() or not islate(self.config, getattr(self, "scoring", None)) or (name == "index" and reindexing(args, kwargs)):
            return original(self, *args, **kwargs)

        return getattr(transaction, name)(self, *args, **kwargs)

    return method


def loader(original):
    """
    Wraps txtai's Embeddings.load: a late-interaction index whose rows live in PostgreSQL while its content is in the saved
    folder drops the rows a writer committed and never saved (`transaction.reconcile`).

    Args:
        original: txtai's Embeddings.load

    Returns:
        method
    """

    @functools.wraps(original)
    def load(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if islate(self.config, getattr(self, "scoring", None)):
            # pylint: disable=C0415
            from . import transaction

            transaction.reconcile(self)

        return result

    return load


def reindexing(args, kwargs):
    """
    Args:
        args: positional arguments of Embeddings.index: documents, reindex, checkpoint
        kwargs: keyword arguments

    Returns:
        True for a reindex call (documents stream from the instance's own database: it cannot be built aside)
    """

    return bool(kwargs.get("reindex", args[1] if len(args) > 1 else False))


def islate(config, scoring=None):
    """
    Checks if an Embeddings config (or its scoring index) is a late-interaction index of this package, without changing it.

    Args:
        config: Embeddings config, may be None
        scoring: the instance's scoring index, if any

    Returns:
        True if the config's scoring is (or will be rewritten to) MuveraScoring
    """

    if scoring is not None and type(scoring).__module__.startswith(__package__.split(".", maxsplit=1)[0]):
        return True
    if not isinstance(config, dict):
        return False

    # Embeddings' own expansion of the `sparse` shortcut, on a copy
    scoring = config.get("scoring")
    if not scoring and config.get("sparse"):
        sparse = config["sparse"]
        scoring = {"method": "sparse", **({"path": sparse} if isinstance(sparse, str) else sparse if isinstance(sparse, dict) else {})}
    if isinstance(scoring, str):
        scoring = {"method": scoring}
    if not isinstance(scoring, dict):
        return False

    scoring = dict(scoring)
    rewrite(scoring)
    return scoring.get("method") == CLASS


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
    Import hook that installs a txtai module's hook right after the module has run.
    """

    def __init__(self):
        self.finding = False

    def find_spec(self, fullname, path, target=None):
        if fullname not in HOOKS or self.finding:
            return None

        # Find the real module spec with the other finders, then install the hook once its code has run
        self.finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.finding = False

        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                install(fullname)
                if all(name in sys.modules for name in HOOKS):
                    sys.meta_path[:] = [finder for finder in sys.meta_path if finder is not self]

            spec.loader.exec_module = exec_module

        return spec
