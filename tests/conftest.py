"""Shared pytest setup for torchrl_sapg's tests."""
from __future__ import annotations

import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Import the package from this checkout. An editable install made while ``torchrl_sapg/``
# had no ``__init__.py`` registers it as a namespace package, which shadows the real
# ``torchrl_sapg/__init__.py`` (``from torchrl_sapg import make_env`` then fails); putting
# the repository root first makes the tests independent of how the package was installed.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
