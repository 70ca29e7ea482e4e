"""
Lazy module: public names of a package imported from their modules on first use, so importing the package stays light
"""

import importlib
import sys


def exports(package, names):
    """
    Builds a package's module-level `__getattr__` and `__dir__` (PEP 562) over a table of public names.

    Args:
        package: the package's __name__
        names: {public name: module relative to the package that defines it, or holds it as a submodule}

    Returns:
        (__getattr__, __dir__)
    """

    def getattr_(name):
        if name in names:
            module = importlib.import_module(f".{names[name]}", package)
            return getattr(module, name) if hasattr(module, name) else importlib.import_module(f".{names[name]}.{name}", package)

        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_():
        return sorted([*vars(sys.modules[package]), *names])

    return getattr_, dir_
