"""Load the `core_kernels` package of any source tree under a private module name, so two trees (e.g. main and a
branch, or a baseline copy) can be compiled or launched side by side in one process without sharing a module."""
import hashlib
import importlib.util
import os
import sys
import types


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
    before the per-op packages, `core_kernels.make_plan`, whose launches carry the same inputs / scalars /
    outputs / constexprs fields and get the launch `options` the executors read. Launches of trees from before
    global scratch get `global_scratch=None`."""
    make_plan = getattr(ck.attention, "make_plan", None)
    if make_plan is not None:
        if "global_scratch" in ck.Launch.__dataclass_fields__:
            return make_plan

        def no_scratch_plan(*args, **kwargs):
            plan = make_plan(*args, **kwargs)
            launches = tuple(types.SimpleNamespace(**{f: getattr(step, f) for f in step.__dataclass_fields__},
                                                   options=step.options, global_scratch=None)
                             for step in plan.launches)
            return types.SimpleNamespace(buffers=plan.buffers, launches=launches, outputs=plan.outputs,
                                         aliases=plan.aliases)

        return no_scratch_plan

    def old_layout_plan(*args, **kwargs):
        plan = ck.make_plan(*args, **kwargs)
        launches = tuple(types.SimpleNamespace(**vars(step), options=dict(num_warps=step.num_warps,
                                                                          num_stages=step.num_stages),
                                               global_scratch=None)
                         for step in plan.launches)
        return types.SimpleNamespace(buffers=plan.buffers, launches=launches, outputs=("out", "lse"))

    return old_layout_plan


def contiguous_strides(ck, shape):
    return (getattr(ck, "contiguous_strides", None) or ck.plan.contiguous_strides)(shape)
