"""
Options module: per-call search knobs, carried as one object from the caller to the storage engine
"""

import numbers

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class SearchOptions:
    """
    Per-call search knobs. None means "the index setting". Engines read the ones they know (faiss: efsearch, nprobe).

    Attributes:
        candidates: FDE candidates re-ranked per query
        efsearch: HNSW search depth
        nprobe: IVF cells probed
        rerank: re-rank with exact MaxSim (False: FDE scores only)
    """

    candidates: int = None
    efsearch: int = None
    nprobe: int = None
    rerank: bool = None

    def __post_init__(self):
        for name in ("candidates", "efsearch", "nprobe"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if value is not None:
                object.__setattr__(self, name, int(value))
        if self.rerank is not None and not isinstance(self.rerank, bool):
            raise ValueError(f"rerank must be True, False or None, got {self.rerank!r}")

    def update(self, other):
        """
        Overrides these options with the values other sets.

        Args:
            other: SearchOptions

        Returns:
            new SearchOptions
        """

        return replace(self, **{f.name: getattr(other, f.name) for f in fields(other) if getattr(other, f.name) is not None})
