"""The files of one checkpoint on disk: the file list written at save, verified at resume, and write errors.

``files.json`` in a tag folder lists every file the save wrote (DeepSpeed's shards, the RNG states, the
layout-free copy, ``trainer_state.json``) with its size and xxh3-64 checksum. It is written after every rank's
files are on disk and before ``COMPLETE``, so a complete checkpoint always carries its list. Each rank hashes
what it wrote itself (reading it back once, from the page cache), so the cost is spread over the ranks.

:func:`verify` answers "is this checkpoint what its save wrote?": a missing, truncated or changed file is named
in the answer, and resume falls back to an older checkpoint. Checkpoints written before file lists existed have
none and are taken as they are. Independently of the list, every ``.pt`` file is scanned for pickled code
(:func:`pretrain.core.safe_load.unsafe_globals`): that is a refusal, not a fallback.

:class:`SaveGuard` records the files this rank writes during a save and turns a failed write (a full disk,
a permission error) into one line naming the path, instead of a traceback from deep inside ``torch.save``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from pretrain.core import safe_load
from pretrain.core.atomic import atomic_write
from pretrain.core.errors import CheckpointError

log = logging.getLogger(__name__)

FILE_LIST = "files.json"
HASH = "xxh3_64"
_CHUNK = 16 << 20
_MB = 1e6

# The classes DeepSpeed's own checkpoint files hold besides tensors and plain types (ZeRO stages 0-3, bf16,
# fp16 loss scaling, pipeline stages; found with torch.serialization.get_unsafe_globals_in_checkpoint).
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
# RNG files written before RNG states were saved as tensors hold NumPy's state as an ndarray.
LEGACY_RNG_GLOBALS = (
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
    "numpy.dtypes.UInt32DType",
)


def resolve_globals(names: tuple[str, ...]) -> list[Any]:
    """The objects behind dotted names, for ``torch.serialization.safe_globals`` (names that do not import
    here, e.g. NumPy 1's module path under NumPy 2, are left out)."""
    import warnings

    out = []
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue
    return out


def deepspeed_safe_globals() -> list[Any]:
    return resolve_globals(DEEPSPEED_GLOBALS)


def allowed_globals_for(rel: str) -> tuple[str, ...]:
    """What a file of the checkpoint may import, by its name: our RNG files may be of the legacy format,
    DeepSpeed's files hold DeepSpeed's few classes, our layout-free copy holds tensors and plain types only."""
    name = Path(rel).name
    if name.startswith("rng_state_rank"):
        return LEGACY_RNG_GLOBALS
    if rel.startswith("universal/"):
        return ()
    return DEEPSPEED_GLOBALS


# ------------------------------------------------------------------------------------------ file list
def file_digest(path: Path) -> str:
    import xxhash

    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def describe(tag_dir: Path, paths: list[Path]) -> dict[str, dict[str, Any]]:
    """``{path relative to tag_dir: {"size", HASH}}`` of ``paths`` (paths outside ``tag_dir`` are left out)."""
    out = {}
    for p in paths:
        try:
            rel = Path(p).resolve().relative_to(tag_dir.resolve()).as_posix()
        except ValueError:
            continue
        out[rel] = {"size": Path(p).stat().st_size, HASH: file_digest(Path(p))}
    return out


def write_file_list(tag_dir: Path, files: dict[str, dict[str, Any]]) -> None:
    body = {"format": 1, "hash": HASH, "total_bytes": sum(e["size"] for e in files.values()),
            "files": dict(sorted(files.items()))}
    atomic_write(tag_dir / FILE_LIST, json.dumps(body, indent=1) + "\n")


def read_file_list(tag_dir: Path) -> dict[str, Any] | None:
    """The parsed file list, None for a checkpoint written before file lists; raises ValueError if damaged."""
    path = tag_dir / FILE_LIST
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_bytes())
        files = body["files"]
        if body.get("hash") != HASH or not all(isinstance(e["size"], int) and e[HASH] for e in files.values()):
            raise ValueError("unexpected entries")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:100]})") from None
    return body


def check_pickles(tag_dir: Path) -> None:
    """Refuse (CheckpointError naming the file) a checkpoint whose ``.pt`` files would import anything but
    tensors, plain types and the few classes their writer uses. Reads pickle opcodes only; damaged archives
    are left to :func:`verify`'s checksums and the loader."""
    for path in sorted(tag_dir.rglob("*.pt")):
        rel = path.relative_to(tag_dir).as_posix()
        try:
            bad = safe_load.unsafe_globals(path, allowed_globals_for(rel))
        except CheckpointError:
            continue
        if bad:
            raise CheckpointError(safe_load.refusal(path, f"it would import {', '.join(bad)}"))


VERIFY_MODES = ("checksum", "size")


def verify(tag_dir: Path, mode: str = "checksum") -> str | None:
    """None if every file in ``tag_dir``'s file list is there with its size and (``mode="checksum"``) checksum,
    or the checkpoint predates file lists; else what is wrong, naming the file. Raises CheckpointError for
    pickled code."""
    if mode not in VERIFY_MODES:
        raise CheckpointError(f"checkpoint.verify={mode!r}; expected one of {', '.join(VERIFY_MODES)}")
    check_pickles(tag_dir)
    try:
        body = read_file_list(tag_dir)
    except ValueError as e:
        return str(e)
    if body is None:
        log.info("%s has no %s (written before checkpoints carried one): not verified", tag_dir, FILE_LIST)
        return None
    for rel, entry in body["files"].items():
        path = tag_dir / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{path} is missing"
        except OSError as e:
            return f"{path} is unreadable ({e.strerror})"
        if size != entry["size"]:
            return f"{path} has {size} bytes, the file list says {entry['size']} (truncated or overwritten)"
        if mode == "size":
            continue
        try:
            digest = file_digest(path)
        except OSError as e:
            return f"{path} is unreadable ({e.strerror})"
        if digest != entry[HASH]:
            return f"{path} does not match its checksum ({HASH} {digest}, the file list says {entry[HASH]})"
    return None


def checkpoint_bytes(tag_dir: Path) -> int:
    """The size of a checkpoint on disk: its file list's total, or the sum of its files'."""
    try:
        body = read_file_list(tag_dir)
    except ValueError:
        body = None
    if body is not None:
        return int(body["total_bytes"])
    return sum(p.stat().st_size for p in tag_dir.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ write errors
def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def no_space(path: Path, needed: int, free: int) -> str:
    return f"no space left on device writing {path} (needs ~{_mb(needed)} MB, {_mb(free)} MB free)"


def free_space_problem(ckpt_dir: Path, tag_dir: Path, needed: int) -> str | None:
    """The message refusing a save of about ``needed`` bytes (the last checkpoint's size) into ``ckpt_dir``
    before anything is written, or None when it fits."""
    free = free_bytes(ckpt_dir)
    return no_space(tag_dir, needed, free) if needed > free else None


def _mb(n: int) -> str:
    mb = n / _MB
    return f"{mb:.2f}" if mb < 10 else f"{mb:.1f}" if mb < 100 else f"{mb:.0f}"


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state dict: what ``torch.save(obj)`` is about to write."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def write_error(e: BaseException, path: Any, needed: int, free_before: int | None = None) -> str:
    """One line for a failed write of ``path``: "no space left on device ..." when the disk is full (torch's
    zip writer reports it as "unexpected pos", without errno), else the error with its path. The free space
    reported is ``free_before`` (what the save started with) when given: by now the partial files fill it."""
    path = getattr(e, "filename", None) or path
    free = free_bytes(Path(os.fspath(path))) if isinstance(path, (str, os.PathLike)) else 0
    full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
        isinstance(e, RuntimeError) and ("unexpected pos" in str(e) or free < max(needed, 1 << 20)))
    if full:
        return no_space(path, needed, free if free_before is None else free_before)
    detail = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0]
    return f"cannot write {path}: {detail[:200].rstrip('.')}"


class SaveGuard:
    """What one rank writes in one save. Inside :meth:`capture`, ``torch.save`` (ours and DeepSpeed's) records
    each file it writes; the first failure is kept as :attr:`error` and later writes are skipped, but the code
    around them (DeepSpeed's barriers, the layout-free copy's gathers) still runs, so every rank reaches the
    collective where the ranks agree that the save failed instead of one rank hanging in a barrier."""

    def __init__(self, tag_dir: Path, expected_bytes: int = 0):
        self.tag_dir, self.expected_bytes = tag_dir, expected_bytes
        self.free_before = free_bytes(tag_dir)
        self.written: list[Path] = []
        self.bytes_written = 0
        self.error: str | None = None

    def fail(self, e: BaseException, path: Any, obj_bytes: int = 0) -> None:
        if self.error is None:
            needed = max(self.expected_bytes, self.bytes_written + obj_bytes)
            self.error = write_error(e, path, needed, self.free_before)

    def record(self, path: Path) -> None:
        self.written.append(Path(path))
        self.bytes_written += Path(path).stat().st_size

    @contextlib.contextmanager
    def capture(self, engine=None) -> Iterator["SaveGuard"]:
        """Patch ``torch.save`` (and DeepSpeed's copy of its recovery script, a plain file copy that would
        otherwise raise past DeepSpeed's last barrier on rank 0) for the block; an OSError raised by the block
        itself becomes :attr:`error` too."""
        import torch

        original = torch.save

        def guarded(obj, f, *args: Any, **kwargs: Any) -> None:
            if self.error is not None:
                return  # the save has failed already: write nothing more, keep going to the collectives
            try:
                original(obj, f, *args, **kwargs)
            except (OSError, RuntimeError) as e:
                self.fail(e, f, tensor_bytes(obj))
                return
            if isinstance(f, (str, os.PathLike)):
                self.record(Path(f))

        patched_copy, own = None, engine is not None and "_copy_recovery_script" in vars(engine)
        if engine is not None and hasattr(engine, "_copy_recovery_script"):
            copy = engine._copy_recovery_script

            def patched_copy(save_path):
                try:
                    copy(save_path)
                except OSError as e:
                    self.fail(e, save_path)

            engine._copy_recovery_script = patched_copy
        torch.save = guarded
        try:
            yield self
        except OSError as e:
            self.fail(e, self.tag_dir)
        finally:
            torch.save = original
            if patched_copy is not None:
                if own:
                    engine._copy_recovery_script = copy
                else:
                    del engine._copy_recovery_script  # the instance attribute: the class's method is back

    def write_text(self, path: Path, text: str) -> None:
        """An atomic text write of this rank, recorded like a ``torch.save``."""
        if self.error is not None:
            return
        try:
            atomic_write(path, text)
        except OSError as e:
            self.fail(e, path, len(text))
            return
        self.record(path)

    def entries(self) -> dict[str, dict[str, Any]]:
        """The file-list entries of what this rank wrote (hashing reads each file back once)."""
        if self.error is not None:
            return {}
        try:
            return describe(self.tag_dir, self.written)
        except OSError as e:
            self.fail(e, getattr(e, "filename", None) or self.tag_dir)
            return {}
