"""
Writes the preset table between the `<!-- presets -->` and `<!-- /presets -->` markers of the README and the documentation,
from the preset table in code (txtai_muvera.core.schema.PRESETS through txtai_muvera.tools.commands.defaults.table). Run it
after changing a preset; tests/test_docs.py fails until it has run.

    python docs/presets.py
"""

import os
import re
import sys

# Repository root: the parent of this folder
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Files that show the preset table
FILES = ["README.md", os.path.join("docs", "configuration.md")]

# The marked block, markers included
BLOCK = re.compile(r"<!-- presets -->\n.*?<!-- /presets -->", re.S)


def block(table):
    """
    The marked block for a table.

    Args:
        table: markdown table

    Returns:
        str
    """

    return f"<!-- presets -->\n\n{table}\n<!-- /presets -->"


def write():
    """
    Rewrites the marked block of every file.

    Returns:
        list of files changed
    """

    sys.path.insert(0, ROOT)

    # pylint: disable=C0415
    from txtai_muvera.tools.commands.defaults import table

    changed = []
    for name in FILES:
        path = os.path.join(ROOT, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()

        if not BLOCK.search(text):
            raise ValueError(f"{name} has no <!-- presets --> ... <!-- /presets --> block")

        updated = BLOCK.sub(lambda _: block(table()), text)
        if updated != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(updated)
            changed.append(name)

    return changed


if __name__ == "__main__":
    for name in write():
        print(f"updated {name}")
