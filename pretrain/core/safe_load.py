"""Loading ``torch.save`` files without running code from them.

A ``.pt`` file is a pickle: unpickled with ``weights_only=False`` it can call any function (a crafted
``__reduce__`` runs a shell command). Every file the project reads back goes through here instead:

* :func:`load`: ``torch.load(weights_only=True)``, with an allow-list of the few classes a file may hold, and
  one clear :class:`CheckpointError` naming the file when it holds anything else or is unreadable;
* :func:`unsafe_globals`: the functions and classes a file would import, read from its pickle opcodes without
  running any, so a checkpoint can be refused before anything is built;
* :func:`weights_only_loads`: the same rule for third-party loaders that call ``torch.load(..., weights_only=False)``
  themselves (DeepSpeed's ``load_checkpoint``, ``zero_to_fp32``), for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from typing import Any, Iterable, Iterator

from pretrain.core.errors import CheckpointError


def qualified_name(obj: Any) -> str:
    """``module.qualname``, as pickle opcodes and ``get_unsafe_globals_in_checkpoint`` spell a global."""
    return f"{obj.__module__}.{obj.__qualname__}"


def unsafe_globals(path: str | os.PathLike, allowed: Iterable[Any] = ()) -> list[str]:
    """The globals a ``torch.save`` zip file would import beyond what ``weights_only`` accepts and ``allowed``
    (objects or dotted names). Reads only the pickle's opcodes, never runs them. Files in the legacy
    (non-zip) format cannot be scanned and return ``[]``: :func:`load` still refuses what they hold."""
    import torch

    if not zipfile.is_zipfile(path):
        return []
    names = {a if isinstance(a, str) else qualified_name(a) for a in allowed}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - a damaged archive: the caller's integrity check names it
        raise CheckpointError(f"cannot read {path}: {_first_line(e)}") from None
    return [g for g in found if g not in names]


def refusal(path: str | os.PathLike, detail: str) -> str:
    return (f"refusing to load {path}: it holds pickled objects that are not tensors or plain types ({detail}); "
            "nothing in it was run. If you did not write this checkpoint, delete it")


def load(path: str | os.PathLike, allowed: Iterable[Any] = (), **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True, **kwargs)`` accepting the classes in ``allowed`` as well."""
    import torch

    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise CheckpointError(refusal(path, _unpickling_detail(e))) from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {_first_line(e)}") from None


@contextlib.contextmanager
def weights_only_loads(allowed: Iterable[Any] = ()) -> Iterator[None]:
    """Inside the block every ``torch.load`` (DeepSpeed's included, whatever it passes) loads with
    ``weights_only=True`` and the ``allowed`` classes, and fails with a :class:`CheckpointError` naming the
    file. ``torch.load`` is replaced on the module for the block's duration, so callers that look it up at
    call time (``torch.load(...)``, as DeepSpeed does) are covered; ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` covers
    any that hold a reference of their own."""
    import torch

    original, env_before = torch.load, os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    allowed = list(allowed)

    def guarded(f, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)
        name = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", repr(f))
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            raise CheckpointError(refusal(name, _unpickling_detail(e))) from None
        except FileNotFoundError:
            raise CheckpointError(f"cannot read {name}: the file is missing") from None
        except (OSError, RuntimeError, EOFError) as e:
            raise CheckpointError(f"cannot read {name}: {_first_line(e)}") from None

    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    torch.load = guarded
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        torch.load = original
        if env_before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = env_before


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (torch's archive errors run on for several lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    if len(text) > 120 and ". " in text:
        text = text[: text.index(". ") + 1]
    return text[:300]


def _unpickling_detail(e: pickle.UnpicklingError) -> str:
    """The offending global from torch's long weights-only message (e.g. ``GLOBAL posix.system``)."""
    import re

    m = re.search(r"GLOBAL (\S+)", str(e))
    return f"it would import {m.group(1)}" if m else _first_line(e)
