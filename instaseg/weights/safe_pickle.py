"""Reading peer weight files without running code from them.

A pickle can call any importable function while it loads (``os.system``, ``builtins.exec`` ...),
so weight files are never read with plain ``pickle.load`` / ``torch.load(weights_only=False)``:

* plain pickles (Detectron2 model-zoo and Detectron/Caffe2 ImageNet ``.pkl`` files: dicts of numpy
  arrays) go through :class:`RestrictedUnpickler`, whose ``find_class`` hands out only the few globals that
  rebuild plain containers and numeric numpy arrays, and refuses everything else by name *before*
  anything is called;
* PyTorch files go through ``torch.load(weights_only=True)``, PyTorch's own restricted unpickler.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import codecs
import collections
import importlib
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instaseg.errors import CheckpointError

__all__ = ["RestrictedUnpickler", "safe_load_pickle", "load_weights_file", "numpy_state_to_tensors"]


def _numpy_core(submodule: str, name: str) -> Callable[[], Any]:
    # numpy 2 moved numpy.core to numpy._core (old name kept as a deprecated alias); pickles
    # written by either major version name their own, so both names resolve to what exists here.
    def resolve() -> Any:
        for package in ("numpy._core", "numpy.core"):
            try:
                return getattr(importlib.import_module(f"{package}.{submodule}"), name)
            except (ImportError, AttributeError):
                continue
        raise CheckpointError(f"this numpy has no {submodule}.{name} to rebuild arrays with")

    return resolve


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


# (module, name) -> resolver. Only what numpy arrays/scalars and plain containers need:
# arrays reduce to _reconstruct(ndarray, shape, typecode) + __setstate__ (protocols 0-4) or to
# _frombuffer(buffer, dtype, shape, order) (protocol 5); scalars to scalar(dtype, bytes);
# Python 3 bytes pickled with protocol 2 to _codecs.encode(str, "latin1"); sets and frozensets
# to their builtins before protocol 4. None of these can reach the file system or a shell.
_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): _constant(np.ndarray),
    ("numpy", "dtype"): _constant(np.dtype),
    ("collections", "OrderedDict"): _constant(collections.OrderedDict),
    ("builtins", "set"): _constant(set),
    ("builtins", "frozenset"): _constant(frozenset),
    ("builtins", "bytearray"): _constant(bytearray),
    ("_codecs", "encode"): _constant(codecs.encode),
}
for _package in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_package}.multiarray", "_reconstruct")] = _numpy_core("multiarray", "_reconstruct")
    _ALLOWED[(f"{_package}.multiarray", "scalar")] = _numpy_core("multiarray", "scalar")
    _ALLOWED[(f"{_package}.numeric", "_frombuffer")] = _numpy_core("numeric", "_frombuffer")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only plain containers and numeric numpy arrays.

    ``find_class`` is the single place a pickle turns a name into a callable; every name outside a
    short allow-list raises :class:`CheckpointError` naming it, so a malicious global is refused
    before it could be called. Python 2 names (``__builtin__``, ``copy_reg``) are mapped to their
    Python 3 modules first, as ``pickle`` itself does. Persistent ids are refused too.
    """

    def find_class(self, module: str, name: str) -> Any:
        original = f"{module}.{name}"
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        resolver = _ALLOWED.get((module, name))
        if resolver is None:
            raise CheckpointError(
                f"refused to unpickle the global {original!r}: weight files may only contain "
                "plain containers and numpy arrays (a pickle that names other callables can run code)"
            )
        return resolver()

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("refused to unpickle a persistent id: not a plain weight file")


def _check_plain(value: Any, where: str = "") -> None:
    """Reject object arrays (their items would be arbitrary objects) anywhere in the structure."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise CheckpointError(f"refused an object array at {where or 'top level'}: not a weight file")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(item, f"{where}/{key}")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")


def safe_load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (latin-1 strings, for Python 2 pickles).

    Detectron and Caffe2 ImageNet ``.pkl`` files were written by Python 2; numpy documents
    ``encoding="latin1"`` as the way to read their arrays from Python 3.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with path.open("rb") as handle:
            data = RestrictedUnpickler(handle, encoding="latin1").load()
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except Exception as error:  # truncated or not a pickle at all
        raise CheckpointError(f"{path}: not a readable pickle file ({type(error).__name__}: {error})") from None
    _check_plain(data)
    return data


def _torch_load(path: Path) -> Any:
    # torchvision's reference training script stores its argparse.Namespace under "args": a plain
    # attribute bag with no code of its own, so it is the one extra class let through.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects that could run code when "
                f"unpickled ({message}). If you trust it, re-save only its state dict with "
                "torch.save(state_dict, new_path) and convert that."
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch file: {message}") from None


def load_weights_file(path: str | Path) -> Any:
    """Read a weight file safely, whatever its container: PyTorch zip/legacy file or plain pickle.

    Zip archives (``torch.save`` since PyTorch 1.6) go to ``torch.load(weights_only=True)``.
    Anything else is first read with :func:`safe_load_pickle`: a plain pickle (Detectron2 and
    Caffe2 ``.pkl`` files, whatever their suffix) is the result, while a legacy PyTorch file
    yields only its leading magic number, and is then read with ``torch.load(weights_only=True)``.
    Returns the unpickled object (numpy arrays are left as they are).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return _torch_load(path)
    data = safe_load_pickle(path)
    if type(data) is int and data == torch.serialization.MAGIC_NUMBER:
        return _torch_load(path)
    return data


def numpy_state_to_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``{name: np.ndarray | Tensor | number}`` -> ``{name: Tensor}`` (copies; arrays keep dtypes)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, (np.ndarray, np.generic)):
            tensors[name] = torch.from_numpy(np.array(value, copy=True))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            tensors[name] = torch.tensor(value)
        else:
            raise CheckpointError(f"{name}: expected an array, got {type(value).__name__}")
    return tensors
