"""End-to-end wall time of GrowthFlow on the shipped configs, side by side, printed as one JSON object.

    python bench/bench_pipeline.py                              # tiny and default
    python bench/bench_pipeline.py --configs default --seeds 0 1 2   # the default over three seeds
    python bench/bench_pipeline.py --configs default --seeds 0 1 2 --zoo config/lm_zoo/default.toml

With ``--zoo``, each GrowthFlow run is preceded, in the same datastore, by an LMZooFlow run of
that config with the same seed (so the same split and data fingerprint): predict_gap then fits
on that zoo, and the JSON scores each large arm's predicted gap against its measured gap
(within 25%, or marked as extrapolation with the reason). The zoo's wall time is recorded
separately from the GrowthFlow run's.

Targets: config/default.toml in at most 20 minutes on 2 cores, config/tiny.toml in at most 2
minutes (on an idle machine: the JSON records the load average and the CPU model, so a run on
a shared machine reads as an upper bound). Each run goes into a fresh temporary datastore; the
JSON also carries the per-step seconds (from the Client API), the run's verdict (capacity
check, per grown arm saving / no saving / not assessed) and its gap predictions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = {"tiny": 120, "default": 1200}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def zoo_run(store: str, env: dict, zoo_config: str, seed: int | None) -> dict:
    """An LMZooFlow run in the datastore ``store`` (GrowthFlow's predict_gap finds it there)."""
    from metaflow import Runner

    params = {} if seed is None else {"seed": seed}
    t0 = time.perf_counter()
    print(f"[bench_pipeline] LM zoo {zoo_config} (seed {seed}) ...", file=sys.stderr, flush=True)
    with Runner(str(ROOT / "flows" / "lm_zoo_flow.py"), show_output=False, env=env, cwd=store,
                config=[("config", str(Path(zoo_config).resolve()))]).run(**params) as running:
        out = {"config": str(zoo_config), "status": running.status, "seconds": round(time.perf_counter() - t0, 1)}
        if running.status != "successful":
            print(running.stderr[-5000:], file=sys.stderr)
        else:
            out["run_id"] = running.run.id
    return out


def gap_check(gap_prediction: dict, tolerance: float = 0.25) -> dict:
    """Each large arm: predicted vs measured gap, within ``tolerance`` (relative) or an extrapolation."""
    out = {}
    for arm, p in (gap_prediction.get("predictions") or {}).items():
        entry = {"measured_gap": p["measured"], "predicted_gap": p["predicted"], "interval": [p["low"], p["high"]],
                 "relative_error": p["rel_error"], "within_tolerance": p["rel_error"] <= tolerance,
                 "within_interval": p["within_interval"], "extrapolation": bool(p["extrapolation"]),
                 "extrapolation_reasons": p.get("extrapolation_reasons", [])}
        entry["meets_goal"] = entry["within_tolerance"] or entry["extrapolation"]
        out[arm] = entry
    return {"tolerance": tolerance, "n_zoo_models": gap_prediction.get("n_zoo_models"),
            "sources": gap_prediction.get("sources"), "arms": out}


def time_run(config: str, seed: int | None = None, zoo_config: str | None = None) -> dict:
    from metaflow import Run, Runner, metadata, namespace

    with tempfile.TemporaryDirectory() as store:
        env = {"USER": os.environ.get("USER", "bench"), "METAFLOW_DATASTORE_SYSROOT_LOCAL": store,
               "HF_HUB_OFFLINE": "1"}
        zoo = zoo_run(store, env, zoo_config, seed) if zoo_config else None
        if zoo is not None and zoo["status"] != "successful":
            return {"config": config, "seed": seed, "status": "zoo failed", "zoo": zoo}
        load_before = os.getloadavg()[0]
        print(f"[bench_pipeline] GrowthFlow {config} (seed {seed}) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        params = {} if seed is None else {"seed": seed}
        with Runner(str(ROOT / "flows" / "growth_flow.py"), show_output=False, env=env, cwd=store,
                    config=[("config", str(ROOT / "config" / f"{config}.toml"))]).run(**params) as running:
            seconds = time.perf_counter() - t0
            if running.status != "successful":
                print(running.stderr[-5000:], file=sys.stderr)
                return {"config": config, "seed": seed, "status": running.status, "seconds": seconds}
            run_id = running.run.id
        metadata(f"local@{store}")
        namespace(None)
        run = Run(f"GrowthFlow/{run_id}")
        steps = {}
        for step in run:
            tasks = list(step)
            spans = [(t.created_at, t.finished_at) for t in tasks if t.finished_at]
            if spans:
                steps[step.id] = round(max(e for _, e in spans).timestamp() - min(s for s, _ in spans).timestamp(), 1)
        out = {"config": config, "seed": seed, "status": "successful", "seconds": round(seconds, 1),
               "target_seconds": TARGET_SECONDS.get(config),
               "within_target": seconds <= TARGET_SECONDS.get(config, 1e9), "step_seconds": steps,
               "load_average_1m_before": load_before, "load_average_1m_after": os.getloadavg()[0]}
        for name, step, artifact in (("summary", "end", "summary"), ("summary_text", "end", "summary_text"),
                                     ("verdict", "join_large", "verdict"),
                                     ("control_plan", "join_large", "control_plan"),
                                     ("gap_prediction", "predict_gap", "gap_prediction")):
            try:                                    # one unreadable artifact must not lose the timings
                value = getattr(run[step].task.data, artifact)
                if isinstance(value, dict):
                    value = {k: v for k, v in value.items() if not isinstance(v, (bytes, bytearray))}
                out[name] = value
            except Exception as exc:  # noqa: BLE001  (recorded in the JSON, named)
                out[name] = f"could not read {step}.{artifact}: {type(exc).__name__}: {exc}"
        if zoo is not None:
            out["zoo"] = zoo
        if isinstance(out.get("gap_prediction"), dict):
            out["gap_check"] = gap_check(out["gap_prediction"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "default"], help="config names under config/")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run each config once per seed (default: once, with the config's seed)")
    parser.add_argument("--zoo", default=None, metavar="LM_ZOO_CONFIG",
                        help="run LMZooFlow with this config (and the same seed) in each run's datastore first")
    parser.add_argument("--out", default=None, help="also write the JSON here (after every run)")
    args = parser.parse_args()
    results = []
    for config in args.configs:
        for seed in (args.seeds or [None]):
            results.append(time_run(config, seed, args.zoo))
            report = {"benchmark": "pipeline_wall_time", "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                      "runs": results}
            if args.out:
                Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
