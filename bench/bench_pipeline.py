"""End-to-end wall time of GrowthFlow on the shipped configs, side by side, printed as one JSON object.

    python bench/bench_pipeline.py                              # tiny and default
    python bench/bench_pipeline.py --configs default --seeds 0 1 2   # the default over three seeds

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


def time_run(config: str, seed: int | None = None) -> dict:
    from metaflow import Run, Runner, metadata, namespace

    with tempfile.TemporaryDirectory() as store:
        env = {"USER": os.environ.get("USER", "bench"), "METAFLOW_DATASTORE_SYSROOT_LOCAL": store,
               "HF_HUB_OFFLINE": "1"}
        load_before = os.getloadavg()[0]
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
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "default"], help="config names under config/")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run each config once per seed (default: once, with the config's seed)")
    parser.add_argument("--out", default=None, help="also write the JSON here (after every run)")
    args = parser.parse_args()
    results = []
    for config in args.configs:
        for seed in (args.seeds or [None]):
            results.append(time_run(config, seed))
            report = {"benchmark": "pipeline_wall_time", "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                      "runs": results}
            if args.out:
                Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
