"""
Legacy module: the class paths txtai-muvera 0.1.0 wrote into saved configs, kept so those indexes fail with a clear message
"""

from txtai.ann import ANN
from txtai.vectors import Vectors

# pylint: disable=W0231,W0613


class Legacy:
    """
    Stands in for a 0.1.0 class. txtai resolves it only when an index saved by 0.1.0 is loaded before the package was imported
    (importing the package upgrades such configs to MuveraScoring on load).
    """

    def __init__(self, *args, **kwargs):
        raise ValueError(
            "This index was saved by txtai-muvera 0.1.0 (config names txtai_muvera.LateVectors / txtai_muvera.MuveraIndex). "
            "Run `import txtai_muvera` before loading it (the package now serves it with txtai_muvera.MuveraScoring, same files), "
            "or rebuild it: Embeddings(sparse=<checkpoint>, content=True).index(documents)"
        )


class LateVectors(Legacy, Vectors):
    """
    0.1.0 vectors model class path.
    """


class MuveraIndex(Legacy, ANN):
    """
    0.1.0 index backend class path.
    """
