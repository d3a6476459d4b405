"""Fixtures of the ClipPPOLoss conformance suite (see the package docstring)."""
from __future__ import annotations

import warnings

import pytest
import torch

from ._harness import FACTORIES


@pytest.fixture(params=FACTORIES, ids=lambda f: f.name)
def factory(request):
    """The loss class under test: ClipPPOLoss (reference), OffPolicyClipPPOLoss, SAPGLoss."""
    return request.param


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TorchRL's MC-entropy / composite notices
        yield
