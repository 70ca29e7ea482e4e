"""
Shared pytest fixtures
"""

import os
import sys

from pathlib import Path

import pytest

# Make the checkpoint builders importable as `from checkpoints import ...`
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=C0413
from checkpoints import build_pylate_checkpoint, build_stanford_checkpoint


@pytest.fixture(scope="session")
def fixtures():
    """
    Path to the fixtures copied into the tests (the suite never reads ../shared, so it passes in a user's clone).
    """

    return Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def pylate_mini(fixtures):
    """
    Path to the pylate-mini parity fixture model (random ColBERT shaped like the seed model, with PyLate's own encodings).
    """

    return fixtures / "pylate-mini" / "model"


@pytest.fixture(scope="session")
def pylate_checkpoint(tmp_path_factory):
    """
    Tiny random checkpoint in the PyLate layout.
    """

    return build_pylate_checkpoint(tmp_path_factory.mktemp("pylate"))


@pytest.fixture(scope="session")
def stanford_checkpoint(tmp_path_factory):
    """
    Tiny random checkpoint in the Stanford layout.
    """

    return build_stanford_checkpoint(tmp_path_factory.mktemp("stanford"))
