"""``torch.compile`` of a detector's dense parts, in place, with a way back to the eager modules.

One helper for both users: ``instaseg bench --modes compile`` (inference, a fixed image size, the
weights frozen into the graph) and ``train.compile`` (training, image sizes that change between
iterations). Only the dense parts are compiled: backbone, neck and the convolution / linear heads.
The data-dependent parts between them (proposal selection, NMS, RoIAlign, target building, mask
pasting) stay eager: their shapes depend on the data, so dynamo would break their graphs or
recompile for every image.

Compiling goes through ``nn.Module.compile``, which sets the module's compiled ``__call__`` and
leaves the module itself in place: the model's ``state_dict`` keys stay the same as eager (no
``_orig_mod.`` prefix), so checkpoints load either way, and :func:`drop_compiled` returns a part to
its eager ``forward`` (the same parameters, nothing copied).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["DENSE_PARTS", "TRAIN_PARTS", "compile_parts", "drop_compiled", "eager_parts", "is_compile_error",
           "describe_error", "buffer_snapshot", "restore_buffers"]

# The detectors' dense submodules by attribute name (Mask R-CNN / MS R-CNN and YOLACT); a model
# simply lacks the ones that are not its own.
DENSE_PARTS: tuple[str, ...] = ("backbone", "neck", "rpn_head", "box_head", "mask_head", "protonet",
                                "prediction_head")
# What ``train.compile`` compiles: every dense part (backbone and neck alone were not measured apart).
TRAIN_PARTS: tuple[str, ...] = DENSE_PARTS


def compile_parts(model: nn.Module, parts: Sequence[str] = DENSE_PARTS, *, dynamic: bool | None = None,
                  freeze: bool = False, training: bool = False, backend: str = "inductor") -> list[str]:
    """``torch.compile`` each of ``model``'s submodules named in ``parts`` in place; the names compiled.

    ``dynamic``: ``torch.compile``'s (False: one graph per input shape, for a fixed benchmark size;
    None: static first, then symbolic sizes once a shape changes, for training's varying sizes).
    ``freeze`` (inductor, inference only): the weights become graph constants, so inductor folds
    frozen norms, pre-packs the oneDNN convolution weights and fuses activations into them; the
    compiled part then ignores later weight changes. ``training`` (inductor): the graphs keep
    PyTorch's NCHW layout instead of inductor's channels-last "layout optimisation", whose
    convolution backward is slow on the CPU (R50-FPN at 800, 2 images: a compiled step 1.39x eager
    with it, 0.97x without; benchmarks/results/compile.md). Compilation itself happens at the first
    call, so that is where most failures surface (:func:`is_compile_error`).
    """
    options: dict[str, bool] = {}
    if backend == "inductor":
        if freeze:
            options["freezing"] = True
        if training:
            options["layout_optimization"] = False
    compiled = []
    for name in parts:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            module.compile(backend=backend, dynamic=dynamic, options=options or None)
            compiled.append(name)
    return compiled


def drop_compiled(model: nn.Module, parts: Sequence[str]) -> None:
    """Return the submodules named in ``parts`` to their eager ``forward`` (undoes :func:`compile_parts`)."""
    for name in parts:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            module._compiled_call_impl = None  # what nn.Module.compile set; None is the eager default


@contextlib.contextmanager
def eager_parts(model: nn.Module, parts: Sequence[str]) -> Iterator[None]:
    """Run the named submodules eagerly inside the block and compiled again after it."""
    saved = {name: getattr(getattr(model, name, None), "_compiled_call_impl", None) for name in parts}
    drop_compiled(model, parts)
    try:
        yield
    finally:
        for name, compiled in saved.items():
            if compiled is not None:
                getattr(model, name)._compiled_call_impl = compiled


def is_compile_error(error: BaseException) -> bool:
    """Whether ``error`` came from dynamo or a compiler backend (inductor's errors derive from
    dynamo's ``BackendCompilerFailed``), not from the model's own code."""
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(error, TorchDynamoException)


def describe_error(error: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line of the message"``, cut to ``limit`` characters (dynamo's messages run
    to pages: the first line names the failure); a backend's failure as
    ``"BackendCompilerFailed (TypeName: first line)"`` of what the backend raised."""
    inner = getattr(error, "inner_exception", None)  # BackendCompilerFailed: what the backend raised
    if isinstance(inner, BaseException):
        return describe_error(inner, limit - len(type(error).__name__) - 2).join([f"{type(error).__name__} (", ")"])
    lines = [line for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def buffer_snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Copies of ``model``'s buffers (batch-norm running statistics): what a forward in training mode
    changes besides the autograd graph, so a failed step can be undone with :func:`restore_buffers`."""
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()}


def restore_buffers(model: nn.Module, snapshot: dict[str, Tensor]) -> None:
    """Copy ``snapshot`` (from :func:`buffer_snapshot`) back into ``model``'s buffers."""
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in snapshot:
                buffer.copy_(snapshot[name])
