"""Stage 2b: gather the small models, their curves and their checkpoints' gap-zoo rows."""

from __future__ import annotations

import dataclasses

from libs.report import Figure, Markdown, Table

__all__ = ["JoinSmallResult", "run", "report"]


@dataclasses.dataclass(frozen=True)
class JoinSmallResult:
    small_models: dict[str, dict[str, bytes]]
    small_inits: dict[str, dict[str, bytes] | None]     # each one's random initialization (None: a run before it was kept)
    small_moments: dict[str, dict[str, bytes] | None]   # each one's final AdamW moments (None: a run before they were kept)
    small_curves: dict[str, list[dict]]
    small_final_val_loss: dict[str, float]
    small_flops: dict[str, float]
    small_flops_total: float
    gap_zoo_rows: list[dict]


def run(results: list[dict]) -> JoinSmallResult:
    """Combine ``pretrain_small`` results (plain dicts, in the config's model order)."""
    if not results:
        raise ValueError("no small models were trained; list at least one in pretrain_small.models")
    return JoinSmallResult(
        small_models={r["name"]: r["model_files"] for r in results},
        small_inits={r["name"]: r.get("init_files") for r in results},
        small_moments={r["name"]: r.get("moment_files") for r in results},
        small_curves={r["name"]: r["curve"] for r in results},
        small_final_val_loss={r["name"]: r["final_val_loss"] for r in results},
        small_flops={r["name"]: r["flops"] for r in results},
        small_flops_total=float(sum(r["flops"] for r in results)),
        gap_zoo_rows=[row for r in results for row in r["gap_rows"]])


def report(result: JoinSmallResult) -> list:
    from steps.train_large import loss_curve_figure

    return [
        Markdown(f"## {len(result.small_models)} small models pretrained\n\n"
                 f"{result.small_flops_total:.3g} training FLOPs in all; {len(result.gap_zoo_rows)} checkpoints "
                 "recorded for the generalization-gap zoo."),
        Table(["model", "final val loss", "training FLOPs"],
              [[name, f"{loss:.4f}", f"{result.small_flops[name]:.3g}"]
               for name, loss in result.small_final_val_loss.items()], title="Small models"),
        Figure(loss_curve_figure(result.small_curves, "Small models: loss curves"), title="Loss curves"),
    ]
