"""A restricted unpickler for the dataset release pickles (ImageNet-32, CIFAR).

``pickle.load`` on a downloaded file runs whatever callable the file names (``os.system``,
``builtins.eval``...). The release files only need numpy array reconstruction plus plain
dicts/lists/ints/bytes/strings, so :class:`SafeUnpickler` admits exactly those globals and
refuses everything else with a :class:`~pipeline.data.storage.DataError` that names the file
and the refused global. Containers and scalars (dict, list, int, str, bytes) are built by pickle
opcodes and need no global at all.

Globals seen in real files (checked with ``pickletools``):
- numpy 1.x, protocol 2 (the releases): ``numpy.core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype``; scalars: ``numpy.core.multiarray.scalar``;
- numpy 2.x: the same under ``numpy._core``; protocol 5 arrays use
  ``numpy._core.numeric._frombuffer`` (``numpy.core.numeric._frombuffer`` on 1.x);
- protocol 2 written by Python 3 encodes ``bytes`` via ``_codecs.encode(str, "latin1")``.

No Ray imports here: this module is core.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.data.storage import DataError


def _numpy_attr(submodule: str, name: str) -> Any:
    """Resolve numpy's private helpers on numpy 2 (``_core``) and 1.x (``core``) alike."""
    core = getattr(np, "_core", None) or getattr(np, "core")  # noqa: B009
    return getattr(getattr(core, submodule), name)


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Only the exact use pickle makes of _codecs.encode: str -> bytes with latin1.
    # Other codecs (e.g. zlib, bz2, rot13) are not needed and are refused.
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(obj, encoding, errors)


def _allowed() -> dict[tuple[str, str], Callable[[], Any]]:
    table: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
    }
    for pkg in ("numpy.core", "numpy._core"):
        table[(f"{pkg}.multiarray", "_reconstruct")] = lambda: _numpy_attr("multiarray",
                                                                           "_reconstruct")
        table[(f"{pkg}.multiarray", "scalar")] = lambda: _numpy_attr("multiarray", "scalar")
        table[(f"{pkg}.numeric", "_frombuffer")] = lambda: _numpy_attr("numeric", "_frombuffer")
    return table


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only numpy array reconstruction."""

    def __init__(self, file: io.BufferedIOBase, *, source: str = "<bytes>",
                 encoding: str = "latin1") -> None:
        # latin1 maps every Python-2 byte string to a str losslessly (numpy needs this).
        super().__init__(file, encoding=encoding)
        self._source = source
        self._table = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        getter = self._table.get((module, name))
        if getter is None:
            raise DataError(
                f"{self._source}: refused to unpickle global '{module}.{name}': dataset pickles "
                "may only contain numpy arrays, dicts, lists, ints, strings and bytes "
                "(this file may be malicious or not a dataset file)"
            )
        return getter()


def safe_loads(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`; errors name ``source``."""
    try:
        return SafeUnpickler(io.BytesIO(data), source=source).load()
    except DataError:
        raise
    except Exception as e:  # truncated/corrupt pickles raise many different types
        raise DataError(f"{source}: not a valid dataset pickle ({type(e).__name__}: {e})") \
            from None


def safe_load(path: str | Path) -> Any:
    """Unpickle the file at ``path`` safely (see :class:`SafeUnpickler`)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    return safe_loads(data, source=str(p))
