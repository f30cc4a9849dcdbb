"""One way for the tests to run a flow end to end: Metaflow's Runner, a successful run or the log that says why not."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROWTH_FLOW = str(ROOT / "flows" / "growth_flow.py")
TINY = str(ROOT / "config" / "tiny.toml")


def run_flow(env: dict, cwd: Path | str, *, flow: str = GROWTH_FLOW, config: str | None = TINY, **params) -> str:
    """Run ``flow`` (with ``--config config CONFIG`` unless ``config`` is None) and return the successful run's id.

    ``env`` is the whole environment of the run (USER, the datastore, HF_HUB_OFFLINE ...);
    ``cwd`` is where it starts. A failed run fails the calling test with the end of its log.
    """
    from metaflow import Runner

    options = {"config": [("config", str(config))]} if config is not None else {}
    with Runner(str(flow), show_output=False, env=env, cwd=str(cwd), **options).run(**params) as running:
        assert running.status == "successful", (running.stdout + running.stderr)[-5000:]
        return running.run.id
