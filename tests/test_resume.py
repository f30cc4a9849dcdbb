"""``@retry`` and ``resume`` continue train_large from its checkpoint in Metaflow's datastore.

The checkpoints go through metaflow-checkpoint's ``@checkpoint`` (flows/checkpointing.py);
nothing is written under the working directory. Three runs of config/tiny.toml share one
folder ``root`` whose ``root/.metaflow`` is the datastore. ``METAFLOW_DATASTORE_SYSROOT_LOCAL``
is not set: Metaflow finds the datastore from the working directory up, as it does for a
user who starts a run in a subfolder of the repository.

1. From ``root/sub`` with ``GROWTHFLOW_FAIL_AT_STEP=grown:12``: the grown arm crashes at
   step 12; ``@retry``'s second attempt restores the step-10 checkpoint from the datastore,
   continues from it and crashes again, so the run fails.
2. From ``root``, a fresh run: every arm starts at step 0, although run 1 left a checkpoint
   of the same flow, user and arm in the datastore.
3. From ``root/sub``, ``resume`` of run 1: the finished tasks are cloned; the grown arm
   continues from run 1's step-10 checkpoint and its loss curve is bit-identical to run 2's.

Afterwards nothing was written under ``root/sub`` (no stray ``.metaflow``), no checkpoint is
left in the datastore, and the cards and predict_gap's artifacts are where the Client finds them.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOW = str(ROOT / "flows" / "growth_flow.py")
TINY = str(ROOT / "config" / "tiny.toml")

pytestmark = pytest.mark.slow


def _env(**extra) -> dict:
    # the runs' user is the test process's own (CI sets USER=ci): the Client reads the runs in that namespace
    return {"USER": os.environ.get("USER") or "test", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def _client(root: Path):
    from metaflow import metadata, namespace
    metadata(f"local@{root}")
    namespace(None)


def _arm_tasks(run) -> dict:
    """train_large's tasks by arm (read from their logs: a failed task stores no result artifact)."""
    from metaflow import Task

    out = {}
    for task in run["train_large"]:
        source = Task(task.origin_pathspec) if task.origin_pathspec else task   # a clone's log is its origin's
        for arm in ("grown", "scratch", "control"):
            if f"[train_large[{arm}]]" in source.stderr:
                out[arm] = task
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from metaflow import Runner

    root = tmp_path_factory.mktemp("resume")
    (root / ".metaflow").mkdir()
    sub = root / "sub"
    sub.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", raising=False)
        mp.setenv("USER", os.environ.get("USER") or "test")      # the Runner reads its run with the Client here
        with Runner(FLOW, show_output=False, env=_env(GROWTHFLOW_FAIL_AT_STEP="grown:12"), cwd=str(sub),
                    config=[("config", TINY)]).run() as failed:
            assert failed.status == "failed", failed.stderr[-5000:]
            failed_id = failed.run.id
        with Runner(FLOW, show_output=False, env=_env(), cwd=str(root), config=[("config", TINY)]).run() as fresh:
            assert fresh.status == "successful", fresh.stderr[-5000:]
            fresh_id = fresh.run.id
        with Runner(FLOW, show_output=False, env=_env(), cwd=str(sub)).resume(origin_run_id=failed_id) as resumed:
            assert resumed.status == "successful", resumed.stderr[-5000:]
            resumed_id = resumed.run.id
    _client(root)
    from metaflow import Run
    return {"root": root, "sub": sub, "failed": Run(f"GrowthFlow/{failed_id}"),
            "fresh": Run(f"GrowthFlow/{fresh_id}"), "resumed": Run(f"GrowthFlow/{resumed_id}")}


def test_retry_continues_from_the_checkpoint_in_the_datastore(runs):
    from metaflow import Task

    grown = _arm_tasks(runs["failed"])["grown"]
    first = Task(grown.pathspec, attempt=0)
    assert "train_large/grown: no checkpoint of this run" in first.stderr
    assert "injected failure at step 12" in first.stderr
    retried = Task(grown.pathspec, attempt=1)
    assert "train_large/grown: restored checkpoint" in retried.stderr
    assert "mf.checkpoints" in retried.stderr                     # from the datastore, not a local folder
    assert "at step 10" in retried.stderr and "injected failure at step 12" in retried.stderr


def test_a_fresh_run_never_loads_another_runs_checkpoint(runs):
    tasks = _arm_tasks(runs["fresh"])
    assert set(tasks) == {"grown", "scratch", "control"}
    for arm, task in tasks.items():
        assert task.data.large_arm["resumed_from_step"] == 0, arm
        assert f"train_large/{arm}: no checkpoint of this run" in task.stderr


def test_resume_continues_from_the_origin_runs_checkpoint_bit_identically(runs):
    failed, fresh, resumed = runs["failed"], runs["fresh"], runs["resumed"]
    for step in ("start", "prepare", "embed", "select_data", "join_small", "grow"):
        assert resumed[step].task.origin_pathspec == failed[step].task.pathspec, f"{step} was not cloned"
    tasks = _arm_tasks(resumed)
    grown = tasks["grown"]
    assert grown.origin_pathspec is None                           # re-executed ...
    assert grown.data.large_arm["resumed_from_step"] == 10         # ... from run 1's step-10 checkpoint
    assert f"(run {failed.id}, step 10)" in grown.stderr
    for arm in ("scratch", "control"):                             # finished in run 1: cloned
        assert tasks[arm].origin_pathspec is not None and tasks[arm].data.large_arm["resumed_from_step"] == 0
    reference = _arm_tasks(fresh)["grown"].data.large_arm
    assert grown.data.large_arm["curve"] == reference["curve"]     # every record, bit for bit
    assert grown.data.large_arm["final_val_loss"] == reference["final_val_loss"]


def test_nothing_is_written_under_the_working_directory_and_checkpoints_are_cleaned_up(runs):
    from metaflow.cards import get_cards

    root, sub, resumed = runs["root"], runs["sub"], runs["resumed"]
    assert list(sub.iterdir()) == []                                # no stray .metaflow, no checkpoint folder
    assert not list(root.rglob("growthflow_checkpoints"))          # the old local mechanism is gone
    data = root / ".metaflow" / "mf.checkpoints" / "checkpoints" / "artifacts"
    assert data.is_dir()                                            # @checkpoint stored them in the datastore ...
    assert [p for p in data.rglob("*") if p.is_file()] == []        # ... and the successful runs removed them
    # the resumed run's later steps, their cards included, went to the datastore the Client reads
    assert resumed["predict_gap"].task.successful and resumed["end"].task.successful
    assert (root / ".metaflow" / "GrowthFlow" / resumed.id / "predict_gap").is_dir()
    for step in ("train_large", "predict_gap", "end"):
        for task in resumed[step]:
            if task.origin_pathspec is None:
                assert len(get_cards(task)) >= 1, f"{step} has no card"
