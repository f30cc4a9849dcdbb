"""Finds, through Metaflow's Client API, the gap-zoo rows a GrowthFlow run may use.

* :func:`lm_zoo_rows`: the latest successful LMZooFlow run (any user, this datastore) whose data
  fingerprint (tokenizer + token arrays) and measurement fingerprint match this run's.
* :func:`earlier_run_rows`: rows of earlier successful runs of this flow with both fingerprints
  equal, finished before this run was created (never a run still running, or one started after
  this one); which runs qualify is decided by :func:`steps.predict_gap.select_earlier_runs`.
* :func:`gap_zoo_inputs`: both, plus this run's own rows, as ``predict_gap.run`` takes them.

Every row carries ``source`` (its run id) and ``key`` (config fingerprint, seed, model), by which
``predict_gap`` de-duplicates reruns and resume copies.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def _global_namespace():
    from metaflow import get_namespace, namespace

    before = get_namespace()
    namespace(None)
    try:
        yield
    finally:
        namespace(before)


def _candidate(run, fingerprint_step: str) -> dict:
    """Plain facts about ``run`` for the filters (missing fingerprints read as None)."""
    facts = {"run_id": run.id, "successful": False, "created_at": run.created_at, "finished_at": None,
             "data_fingerprint": None, "measurement_fingerprint": None}
    try:
        facts["successful"] = bool(run.successful)
        facts["finished_at"] = run.finished_at if facts["successful"] else None
        data = run[fingerprint_step].task.data
        facts["data_fingerprint"] = getattr(data, "data_fingerprint", None)
        facts["measurement_fingerprint"] = getattr(data, "measurement_fingerprint", None)
    except Exception:   # an old, broken or half-written run: it keeps its None fingerprints and is left out
        pass
    return facts


def lm_zoo_rows(data_fingerprint: str, measurement_fingerprint: str, *, flow_name: str = "LMZooFlow",
                max_runs_scanned: int = 50) -> tuple[list[dict], dict | None, list[dict]]:
    """(rows, the zoo run used or None, runs looked at and left out) for the latest matching LM zoo."""
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    excluded = []
    with _global_namespace():
        try:
            runs = list(Flow(flow_name).runs())
        except MetaflowNotFound:
            return [], None, []
        for run in runs[:max_runs_scanned]:
            c = _candidate(run, "prepare")
            if not c["successful"]:
                reason = "not successful (failed or still running)"
            elif c["data_fingerprint"] != data_fingerprint:
                reason = "other corpus or tokenizer (data fingerprint differs)"
            elif c["measurement_fingerprint"] != measurement_fingerprint:
                reason = "rows measured another way (measurement fingerprint differs)"
            else:
                rows = [dict(r, source=run.id) for r in run["fit_zoo"].task.data.zoo_rows]
                return rows, {"flow": flow_name, "run_id": run.id, "role": "LM zoo"}, excluded
            excluded.append({"run_id": f"{flow_name}/{run.id}", "reason": reason})
    return [], None, excluded


def earlier_run_rows(flow_name: str, this_run_id: str, data_fingerprint: str, measurement_fingerprint: str, *,
                     max_runs: int, rows_step: str = "join_small", rows_artifact: str = "gap_zoo_rows",
                     fingerprint_step: str = "prepare") -> tuple[list[dict], list[dict], list[dict]]:
    """(rows, runs used, runs left out) of earlier runs of ``flow_name`` that may be pooled with this one."""
    from metaflow import Flow, Run
    from steps.predict_gap import select_earlier_runs

    if max_runs == 0:
        return [], [], []
    with _global_namespace():
        this = Run(f"{flow_name}/{this_run_id}")
        runs = {r.id: r for r in Flow(flow_name).runs()}
        candidates = [_candidate(r, fingerprint_step) for r in runs.values() if r.id != this_run_id]
        kept, excluded = select_earlier_runs(candidates, this_run_id=this_run_id, this_created_at=this.created_at,
                                             data_fingerprint=data_fingerprint,
                                             measurement_fingerprint=measurement_fingerprint, max_runs=max_runs)
        rows, used = [], []
        for c in kept:
            earlier = getattr(runs[c["run_id"]][rows_step].task.data, rows_artifact, [])
            rows.extend(dict(r, source=c["run_id"]) for r in earlier)
            used.append({"flow": flow_name, "run_id": c["run_id"], "role": "earlier run"})
    return rows, used, [dict(e, run_id=f"{flow_name}/{e['run_id']}") for e in excluded]


def gap_zoo_inputs(cfg, *, flow_name: str, run_id: str, own_rows: list[dict], data_fingerprint: str,
                   measurement_fingerprint: str, rows_step: str = "predict_gap", rows_artifact: str = "gap_own_rows",
                   fingerprint_step: str = "predict_gap") -> tuple[list[dict], list[dict], list[dict]]:
    """(zoo rows, sources, excluded) for ``steps.predict_gap.run``; ``cfg`` is its GapConfig.

    Earlier runs of ``flow_name`` lend the keyed rows they stored as ``rows_step.rows_artifact``; their
    ``data_fingerprint`` and ``measurement_fingerprint`` artifacts are read at ``fingerprint_step``.
    """
    rows = [dict(r, source=run_id) for r in own_rows]
    sources = [{"flow": flow_name, "run_id": run_id, "role": "this run"}]
    excluded: list[dict] = []
    if cfg.use_lm_zoo:
        zoo, used, left_out = lm_zoo_rows(data_fingerprint, measurement_fingerprint, flow_name=cfg.lm_zoo_flow)
        excluded += left_out
        if used is None:
            excluded.append({"run_id": cfg.lm_zoo_flow, "reason": "no successful LM zoo run with this run's data "
                             f"fingerprint {data_fingerprint}; run flows/lm_zoo_flow.py with the same prepare "
                             "settings and seed"})
        else:
            rows = zoo + rows
            sources.insert(0, used)
    if cfg.include_earlier_runs:
        earlier, used, left_out = earlier_run_rows(flow_name, run_id, data_fingerprint, measurement_fingerprint,
                                                   max_runs=cfg.max_earlier_runs, rows_step=rows_step,
                                                   rows_artifact=rows_artifact, fingerprint_step=fingerprint_step)
        rows += earlier
        sources += used
        excluded += left_out
    return rows, sources, excluded
