"""End-to-end wall time of GrowthFlow on the shipped configs, side by side, printed as one JSON object.

    python bench/bench_pipeline.py                    # tiny and default
    python bench/bench_pipeline.py --configs tiny     # just one

Targets (issue 2): config/default.toml in at most 15 minutes on 2 cores, config/tiny.toml in
at most 2 minutes. Each run goes into a fresh temporary datastore; the JSON also carries the
per-step seconds (from the Client API) and the run's key figures.
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
TARGET_SECONDS = {"tiny": 120, "default": 900}


def time_run(config: str) -> dict:
    from metaflow import Run, Runner, metadata, namespace

    with tempfile.TemporaryDirectory() as store:
        env = {"USER": os.environ.get("USER", "bench"), "METAFLOW_DATASTORE_SYSROOT_LOCAL": store,
               "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        with Runner(str(ROOT / "flows" / "growth_flow.py"), show_output=False, env=env, cwd=store,
                    config=[("config", str(ROOT / "config" / f"{config}.toml"))]).run() as running:
            seconds = time.perf_counter() - t0
            if running.status != "successful":
                print(running.stderr[-5000:], file=sys.stderr)
                return {"config": config, "status": running.status, "seconds": seconds}
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
        summary = run["end"].task.data.summary
        gap = run["predict_gap"].task.data
        gap_figures = {"zoo_rows": gap.gap_n_zoo_rows, "zoo_models": gap.gap_n_zoo_models,
                       "best_predictor": gap.gap_best_predictor, "leave_one_model_out": gap.gap_r2_table,
                       "large_models": {arm: {k: p[k] for k in ("predicted", "measured", "abs_error")}
                                        for arm, p in gap.gap_predictions.items()}}
    return {"config": config, "status": "successful", "seconds": round(seconds, 1),
            "target_seconds": TARGET_SECONDS.get(config), "within_target": seconds <= TARGET_SECONDS.get(config, 1e9),
            "step_seconds": steps, "load_average_1m_after": os.getloadavg()[0], "summary": summary,
            "gap_prediction": gap_figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "default"], help="config names under config/")
    args = parser.parse_args()
    results = [time_run(c) for c in args.configs]
    print(json.dumps({"benchmark": "pipeline_wall_time", "cpu_count": os.cpu_count(), "runs": results},
                     indent=2, default=str))


if __name__ == "__main__":
    main()
