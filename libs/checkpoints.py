"""Training checkpoints on disk: no pickle, written atomically, verified before use.

A checkpoint folder holds one subfolder per saved step::

    checkpoint_dir/
        step-00000010/
            model.safetensors      the model's state_dict (tensors only)
            optimizer.safetensors  the optimizer's per-parameter tensors (AdamW moments, step counts)
            arrays.safetensors     the batch sampler's epoch order, torch's CPU RNG state
            state.json             step, fingerprint, loss curve, token count, running loss,
                                   sampler RNG state, the optimizer's param groups (plain JSON)
            MANIFEST.json          format, step, fingerprint, and the size and SHA-256 of every
                                   file above; written last
        step-00000020/ ...
        rejected/                  checkpoints set aside as corrupt, truncated or mismatched

Nothing is ever unpickled: tensors are read with safetensors, everything else with
``json``, so a planted file (a pickle renamed ``model.safetensors``, an old
``checkpoint.pt``) runs no code: it fails the checksum or the safetensors parser and is
set aside with a warning that names it.

A checkpoint is written into a hidden temporary folder beside its final place and
renamed into place once every file and the manifest are on disk (``os.replace`` of a
folder is atomic on POSIX): a crash mid-write leaves no half checkpoint under a
``step-*`` name. :func:`prune_checkpoints` keeps the newest N.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["FORMAT", "MANIFEST", "CheckpointError", "LoadedCheckpoint", "checkpoint_name", "list_checkpoints",
           "save_checkpoint", "verify_checkpoint", "read_checkpoint", "load_latest_checkpoint",
           "set_aside", "prune_checkpoints", "remove_checkpoints", "finite_or_none", "LEGACY_NAMES"]

FORMAT = "growthflow-checkpoint/1"
MANIFEST = "MANIFEST.json"
_FILES = ("model.safetensors", "optimizer.safetensors", "arrays.safetensors", "state.json")
_STEP_DIR = re.compile(r"^step-(\d{8})$")
REJECTED = "rejected"
LEGACY_NAMES = ("checkpoint.pt", "checkpoint.tmp")   # the old pickle format: never loaded


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, truncated, altered, or belongs to another configuration."""


class LoadedCheckpoint:
    """What :func:`read_checkpoint` returns: tensors and plain state, nothing executed."""

    def __init__(self, path: Path, step: int, model: dict[str, torch.Tensor], optimizer: dict[str, Any],
                 arrays: dict[str, torch.Tensor], state: dict[str, Any]):
        self.path, self.step, self.model, self.optimizer = path, step, model, optimizer
        self.arrays, self.state = arrays, state


def checkpoint_name(step: int) -> str:
    """The folder name of step ``step``'s checkpoint (sorts by step)."""
    return f"step-{step:08d}"


def list_checkpoints(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete-looking checkpoint in ``checkpoint_dir``, newest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _optimizer_to_files(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and plain values (JSON)."""
    tensors, scalars = {}, {}
    for idx, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            key = f"{idx}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous().clone()
            elif isinstance(value, (int, float, bool)) or value is None:
                scalars[key] = value
            else:
                raise CheckpointError(f"optimizer state {key} has type {type(value).__name__}, which the "
                                      "checkpoint format (tensors + JSON) cannot store")
    groups = json.loads(json.dumps(state_dict["param_groups"], default=_json_default))
    return tensors, {"param_groups": groups, "scalars": scalars}


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not plain JSON")


def _optimizer_from_files(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(plain["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = plain["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def save_checkpoint(checkpoint_dir: str | Path, step: int, *, fingerprint: str, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: dict[str, Any],
                    arrays: dict[str, np.ndarray | torch.Tensor]) -> Path:
    """Write step ``step``'s checkpoint atomically; return its folder.

    ``state`` must be plain JSON (numbers, strings, lists, dicts); ``arrays`` become
    tensors in ``arrays.safetensors``. A checkpoint of the same step already there is
    replaced (a retried attempt re-saving a step).
    """
    from safetensors.torch import save_file

    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # clones: tied weights (lm_head = wte) would otherwise be shared tensors, which safetensors refuses
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    opt_tensors, opt_plain = _optimizer_to_files(optimizer.state_dict())
    arr = {k: (v.detach().cpu().contiguous().clone() if isinstance(v, torch.Tensor)
               else torch.from_numpy(np.ascontiguousarray(v))) for k, v in arrays.items()}
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"format": FORMAT})
    save_file(arr, str(tmp / "arrays.safetensors"), metadata={"format": FORMAT})
    doc = {"format": FORMAT, "step": int(step), "fingerprint": fingerprint, "optimizer": opt_plain, **state}
    _write_bytes(tmp / "state.json", json.dumps(doc, default=_json_default).encode())
    files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in _FILES}
    manifest = {"format": FORMAT, "step": int(step), "fingerprint": fingerprint, "files": files,
                "written_at": time.time()}
    _write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    if final.exists():
        old = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)                       # the checkpoint appears whole, or not at all
    return final


def verify_checkpoint(path: str | Path, fingerprint: str | None = None) -> dict[str, Any]:
    """Check ``path``'s manifest, file sizes and checksums (and fingerprint); return the manifest.

    Raises :class:`CheckpointError` naming the folder and what is wrong.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST} (an incomplete or foreign checkpoint)") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: {MANIFEST} is unreadable ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {manifest.get('format') if isinstance(manifest, dict) else manifest!r} "
                              f"(expected {FORMAT})")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(_FILES):
        raise CheckpointError(f"{path}: the manifest lists {sorted(files) if isinstance(files, dict) else files}, "
                              f"expected {sorted(_FILES)}")
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        size = f.stat().st_size
        if size != want.get("bytes"):
            raise CheckpointError(f"{path}: {name} has {size} bytes, the manifest says {want.get('bytes')} "
                                  "(truncated or altered)")
        if _sha256(f) != want.get("sha256"):
            raise CheckpointError(f"{path}: {name} does not match its SHA-256 in the manifest (corrupt or altered)")
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{path}: it belongs to another configuration, data size, seed or model "
                              f"(fingerprint {manifest.get('fingerprint')}, this run's is {fingerprint})")
    return manifest


def read_checkpoint(path: str | Path, fingerprint: str | None = None) -> LoadedCheckpoint:
    """Verify and read one checkpoint folder (safetensors + JSON only; nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    manifest = verify_checkpoint(path, fingerprint)
    try:
        model = load_file(str(path / "model.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        arrays = load_file(str(path / "arrays.safetensors"))
        state = json.loads((path / "state.json").read_text())
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if state.get("step") != manifest["step"] or state.get("fingerprint") != manifest["fingerprint"]:
        raise CheckpointError(f"{path}: state.json disagrees with the manifest (step or fingerprint)")
    optimizer = _optimizer_from_files(opt_tensors, state.pop("optimizer"))
    return LoadedCheckpoint(path, int(manifest["step"]), model, optimizer, arrays, state)


def set_aside(path: str | Path, reason: str) -> Path:
    """Move a bad checkpoint into ``rejected/`` beside it (kept for inspection, never loaded again)."""
    path = Path(path)
    rejected = path.parent / REJECTED
    rejected.mkdir(exist_ok=True)
    tag = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")[:40] or "bad"
    target = rejected / f"{path.name}.{tag}.{int(time.time() * 1000)}"
    os.replace(path, target)
    return target


def load_latest_checkpoint(checkpoint_dir: str | Path, fingerprint: str,
                           warn: Callable[[str], None], *, move_bad: bool = True) -> LoadedCheckpoint | None:
    """The newest checkpoint that verifies, or None (train from step 0).

    Every checkpoint that fails (truncated, corrupt, altered, another configuration) is
    named through ``warn`` and, with ``move_bad``, set aside into ``rejected/``; the next
    older one is tried. Files of the old pickle format are named and never loaded.
    """
    root = Path(checkpoint_dir)
    for legacy in LEGACY_NAMES:
        if (root / legacy).exists():
            warn(f"ignoring {root / legacy}: an old pickle-format checkpoint, never loaded (unpickling can run "
                 "code); training continues from the newest safetensors checkpoint or from step 0. Delete it.")
    for step, path in list_checkpoints(root):
        try:
            return read_checkpoint(path, fingerprint)
        except CheckpointError as err:
            where = ""
            if move_bad:
                try:
                    where = f"; set aside as {set_aside(path, str(err).split(': ', 1)[-1])}"
                except OSError:
                    pass                         # another rank moved it first
            warn(f"WARNING: skipping checkpoint {path} (step {step}): {str(err).split(': ', 1)[-1]}{where}; "
                 "falling back to the previous checkpoint or step 0")
    return None


def prune_checkpoints(checkpoint_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep`` = 0 keeps all); return what was removed."""
    if keep <= 0:
        return []
    removed = []
    for _, path in list_checkpoints(checkpoint_dir)[keep:]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def remove_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Delete every ``step-*`` checkpoint (after a successful run); ``rejected/`` stays for inspection."""
    removed = []
    for _, path in list_checkpoints(checkpoint_dir):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN in strict readers: store a not-yet-defined running loss as null."""
    return x if math.isfinite(x) else None
