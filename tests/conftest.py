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
def shared():
    """
    Path to the shared read-only material (fixtures, data).
    """

    return Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def pylate_tiny(shared):
    """
    Path to the pylate-tiny parity fixture model.
    """

    return shared / "fixtures" / "pylate-tiny" / "model"


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
