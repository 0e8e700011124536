"""Load the `core_kernels` package of any source tree under a private module name, so two trees (e.g. main and a
branch, or a baseline copy) can be compiled or launched side by side in one process without sharing a module."""
import hashlib
import importlib.util
import os
import sys


def load_core_kernels(root):
    name = "core_kernels_tree_" + hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:8]
    if name in sys.modules:
        return sys.modules[name]
    package = os.path.join(root, "core_kernels")
    spec = importlib.util.spec_from_file_location(name, os.path.join(package, "__init__.py"),
                                                  submodule_search_locations=[package])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def attention_make_plan(ck):
    """The attention op's plan function of a loaded tree: `core_kernels.attention.make_plan`, or, in trees from
    before the per-op packages, `core_kernels.make_plan` (their launches carry the same inputs / scalars /
    outputs / constexprs fields, so the executors run them too)."""
    return getattr(ck.attention, "make_plan", None) or ck.make_plan


def contiguous_strides(ck, shape):
    return (getattr(ck, "contiguous_strides", None) or ck.plan.contiguous_strides)(shape)
