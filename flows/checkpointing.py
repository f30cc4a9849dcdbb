"""Mid-step checkpoints in Metaflow's datastore: the bridge between ``libs.training`` and ``@checkpoint``.

``libs.training.train_model`` writes checkpoints into a plain local folder
(:mod:`libs.checkpoints`: safetensors + JSON, atomic, checksummed) and never imports
Metaflow. This module gives a step that folder and keeps it in the datastore through
metaflow-checkpoint's ``@checkpoint`` (``current.checkpoint``), so ``@retry`` and
``resume`` continue from the last checkpoint on local and remote compute alike, with no
shared volume and nothing written under the working directory::

    @card(type="blank")
    @datastore_checkpoints                     # this module: restore, upload, clean up
    @checkpoint(load_policy="none", show_card=False)
    @retry(times=1)
    @step
    def train_large(self):
        ...
        result = train_large.run(..., checkpoint_dir=checkpoint_dir())

What is loaded, deliberately scoped (``load_policy="none"``: the extension loads nothing
by itself, this module chooses):

* a task's own earlier attempts (``@retry``),
* the same foreach branch (arm) of the run's *origin* runs (``resume``, and a resume of a
  resume: the chain of ``origin-run-id``),
* never another run's checkpoint: a fresh ``run`` starts from step 0 even when an earlier
  run of the same flow, user and arm left checkpoints behind (``load_policy="eager"`` would
  pick those up).

Before the step runs, the newest matching checkpoints are downloaded into a temporary
folder and checked (manifest, sizes, SHA-256); a bad one is named in a warning and
skipped, and ``train_model`` verifies again and falls back to the previous one or step 0.
A watcher thread uploads every complete checkpoint in the folder within about a second,
whether this process or data-parallel ranks wrote it, and a final sync uploads what is left
when the step ends or fails (``upload_checkpoint`` uploads one folder at once, for a caller
that wants it as ``on_checkpoint``). The datastore mirrors the local folder: what
``train_model`` prunes (``train.keep_checkpoints``) is deleted from the datastore too, and
when it removed every checkpoint after a successful training
(``train.remove_checkpoints_on_success``), this task's and its origin runs' checkpoints of
the same arm are deleted.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from metaflow import current, user_step_decorator

# libs.checkpoints (torch, safetensors) is imported inside the methods: every task imports this module

__all__ = ["CHECKPOINT_NAME", "CheckpointSession", "datastore_checkpoints", "checkpoint_dir", "upload_checkpoint",
           "run_lineage"]

CHECKPOINT_NAME = "growthflow"      # the name under which @checkpoint files our checkpoints
_WATCH_SECONDS = 1.0
_active: "CheckpointSession | None" = None


def _say(message: str) -> None:
    print(f"[checkpoints] {message}", file=sys.stderr, flush=True)


def _origin_of(flow_name: str, run_id: str) -> str | None:
    """The run ``run_id`` was resumed from (Metaflow's ``origin-run-id`` task metadata), or None."""
    from metaflow import Run

    try:
        task = Run(f"{flow_name}/{run_id}", _namespace_check=False)["start"].task
        return task.metadata_dict.get("origin-run-id") or None
    except Exception:  # noqa: BLE001  (a run the Client cannot read ends the chain)
        return None


def run_lineage() -> list[str]:
    """This run's id, then its origin run, that run's origin, ... (only ``resume`` creates origins)."""
    ids = [current.run_id]
    origin = current.origin_run_id
    while origin and origin not in ids and len(ids) < 50:
        ids.append(str(origin))
        origin = _origin_of(current.flow_name, str(origin))
    return ids


class CheckpointSession:
    """One task's checkpoint folder, restored from and mirrored into the datastore."""

    def __init__(self, label: str):
        self.label = label
        self.directory = tempfile.mkdtemp(prefix="growthflow_ckpt_")   # the system temp dir, not the cwd
        self._lock = threading.Lock()
        self._uploaded: dict[str, dict] = {}     # local step folder name -> datastore reference
        self._restored: dict[str, dict] = {}     # step folder name -> the lineage reference it came from
        self._lineage: list[str] = []
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # ---- before the step ------------------------------------------------------------------
    def _candidates(self) -> list[dict]:
        """This arm's checkpoints from this task's attempts and the origin runs, newest step first."""
        self._lineage = run_lineage()
        found = []
        for ref in current.checkpoint.list(name=CHECKPOINT_NAME, full_namespace=True):
            run_id = (ref.get("pathspec") or "").split("/")[1:2]
            meta = ref.get("metadata") or {}
            if run_id and run_id[0] in self._lineage and meta.get("label") == self.label:
                found.append(ref)
        return sorted(found, key=lambda r: (int((r.get("metadata") or {}).get("step", -1)), r.get("created_on", "")),
                      reverse=True)

    def restore(self) -> None:
        """Download every matching checkpoint (newest first) that passes its checksums."""
        from libs.checkpoints import CheckpointError, checkpoint_name, verify_checkpoint

        candidates = self._candidates()
        if not candidates:
            origin = f" or origin runs {self._lineage[1:]}" if len(self._lineage) > 1 else ""
            _say(f"{self.label}: no checkpoint of this run{origin}: training starts at step 0")
            return
        for ref in candidates:
            step = int(ref["metadata"]["step"])
            target = Path(self.directory) / checkpoint_name(step)
            if target.exists():
                continue
            tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=self.directory))
            where = f"{ref.get('url') or ref.get('key')} (run {ref['pathspec'].split('/')[1]}, step {step})"
            try:
                current.checkpoint.load(ref, path=str(tmp))
                verify_checkpoint(tmp)
            except (CheckpointError, Exception) as err:  # noqa: BLE001  (any unreadable download is skipped)
                detail = str(err).split(": ", 1)[-1] if isinstance(err, CheckpointError) else repr(err)
                _say(f"WARNING: {self.label}: skipping checkpoint {where}: {detail}; falling back to the "
                     "previous checkpoint or step 0")
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            os.replace(tmp, target)
            self._restored[target.name] = ref
            _say(f"{self.label}: restored checkpoint {where}")

    # ---- while training ------------------------------------------------------------------
    def upload(self, folder: str) -> None:
        """Upload one complete local checkpoint folder (``train_model``'s ``on_checkpoint``)."""
        from libs.checkpoints import CheckpointError, verify_checkpoint

        folder_path = Path(folder)
        with self._lock:
            if folder_path.name in self._uploaded or folder_path.name in self._restored:
                return
            try:
                manifest = verify_checkpoint(folder_path)
                ref = current.checkpoint.save(
                    path=str(folder_path), name=CHECKPOINT_NAME, latest=True,
                    metadata={"step": int(manifest["step"]), "label": self.label, "run_id": current.run_id,
                              "fingerprint": manifest["fingerprint"]})
            except (CheckpointError, FileNotFoundError) as err:
                _say(f"{self.label}: not uploading {folder_path.name}: {err}")   # pruned or half-written
                return
            except Exception as err:  # noqa: BLE001  (storage hiccup: training goes on, the next sync retries)
                _say(f"WARNING: {self.label}: uploading {folder_path} to the datastore failed ({err!r}); "
                     "retrying at the next checkpoint and when the step ends")
                return
            self._uploaded[folder_path.name] = ref.to_dict() if hasattr(ref, "to_dict") else dict(ref)
            self._mirror_pruning()

    def sync(self) -> None:
        """Upload every complete local checkpoint not uploaded yet (the data-parallel ranks' ones)."""
        from libs.checkpoints import list_checkpoints

        for _, folder in sorted(list_checkpoints(self.directory)):
            self.upload(str(folder))

    def _mirror_pruning(self) -> None:
        """Delete from the datastore this task's checkpoints that train_model pruned locally."""
        from libs.checkpoints import list_checkpoints

        local = {p.name for _, p in list_checkpoints(self.directory)}
        for name in [n for n in self._uploaded if n not in local]:
            _delete(self._uploaded.pop(name))

    def _watch(self) -> None:
        while not self._stop.wait(_WATCH_SECONDS):
            try:
                self.sync()
            except Exception as err:  # noqa: BLE001  (the final sync reports what stays broken)
                _say(f"{self.label}: background upload failed ({err!r}); retrying")

    def start(self) -> "CheckpointSession":
        self.restore()
        self._watcher = threading.Thread(target=self._watch, name="checkpoint-upload", daemon=True)
        self._watcher.start()
        return self

    # ---- after the step ------------------------------------------------------------------
    def close(self, succeeded: bool) -> None:
        """Stop the watcher; upload what is left; after success, clean up as train_model did locally."""
        from libs.checkpoints import list_checkpoints

        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        try:
            self.sync()
            if succeeded and not list_checkpoints(self.directory):
                # train_model removed its checkpoints (train.remove_checkpoints_on_success): so does the datastore
                refs = {r["key"]: r for r in [*self._candidates(), *self._uploaded.values()]}.values()
                for ref in refs:
                    _delete(ref)
                refs = list(refs)
                if refs:
                    _say(f"{self.label}: training finished; removed {len(refs)} checkpoint(s) of runs "
                         f"{sorted({r['pathspec'].split('/')[1] for r in refs})} from the datastore")
                self._uploaded.clear()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _delete(ref: dict) -> None:
    """Remove one checkpoint from the datastore (files and both metadata entries)."""
    from metaflow_extensions.obcheckpoint.plugins.machine_learning_utilities.datastore.context import (
        datastore_context)
    from metaflow_extensions.obcheckpoint.plugins.machine_learning_utilities.datastructures import (
        CheckpointArtifact)

    try:
        CheckpointArtifact.hydrate(ref)._delete(datastore_context.get())
    except Exception as err:  # noqa: BLE001  (a leftover checkpoint is harmless; say so)
        _say(f"could not delete checkpoint {ref.get('key')}: {err!r}")


@user_step_decorator
def datastore_checkpoints(step_name, flow, inputs=None):
    """Step decorator (under ``@checkpoint``): a restored checkpoint folder for the step, kept in the datastore.

    The folder is :func:`checkpoint_dir`; the session's watcher uploads what is written there.
    In a foreach step every branch (its ``self.input``) has its own checkpoints.
    """
    global _active
    if not hasattr(current, "checkpoint"):
        raise RuntimeError(f"step {step_name}: @datastore_checkpoints needs metaflow-checkpoint's @checkpoint "
                           "on the same step (pip install -r requirements.txt)")
    branch = getattr(flow, "input", None) if getattr(flow, "index", None) is not None else None
    label = step_name if branch is None else f"{step_name}/{branch}"
    _active = CheckpointSession(label).start()
    try:
        yield
    except BaseException:
        try:
            _active.close(succeeded=False)      # upload what the failed attempt saved, for @retry and resume
        except Exception as err:  # noqa: BLE001  (never hide the step's own error)
            _say(f"WARNING: {label}: could not upload the last checkpoints ({err!r})")
        _active = None
        raise
    _active.close(succeeded=True)
    _active = None


def _session() -> CheckpointSession:
    if _active is None:
        raise RuntimeError("no checkpoint session: decorate the step with @datastore_checkpoints and "
                           "@checkpoint(load_policy='none') (see flows/checkpointing.py)")
    return _active


def checkpoint_dir(name: str | None = None) -> str:
    """The step's local checkpoint folder (restored from the datastore; a temporary folder, not the cwd).

    ``name``, when given, must be the session's label (``<step>/<foreach value>``): a guard
    against training one branch into another branch's checkpoints.
    """
    session = _session()
    if name is not None and name != session.label:
        raise RuntimeError(f"checkpoint folder {name!r} asked for inside a step whose checkpoints are "
                           f"{session.label!r}")
    return session.directory


def upload_checkpoint(folder: str) -> None:
    """``on_checkpoint`` for ``train_model``: upload the checkpoint just saved into the datastore."""
    _session().upload(folder)
