"""Test set-up: without a GPU the real Triton kernels run through the interpreter, JAX on its CPU backend.

Both variables are read when the kernels are decorated / JAX starts, so they are set here, before any test
module imports sparse_sageattn.
"""
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
DEVICE = "cuda" if ON_GPU else "cpu"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not ON_GPU:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE
