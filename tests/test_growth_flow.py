"""GrowthFlow end to end through Metaflow's Runner on config/tiny.toml, in a temporary datastore.

One successful run is shared by the artifact checks; bad inputs fail with clear errors and
leave the successful run's artifacts intact. Resume and @retry from checkpoints: tests/test_resume.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.flow_runs import run_flow

ROOT = Path(__file__).resolve().parent.parent
FLOW = str(ROOT / "flows" / "growth_flow.py")
TINY = str(ROOT / "config" / "tiny.toml")

pytestmark = pytest.mark.slow


def _env(root: Path, **extra) -> dict:
    return {"USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root), "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1", **extra}


# Runs start in their datastore folder. Metaflow 2.19.39 writes local cards under the first `.metaflow` found
# from the working directory up, while the Client reads them from the task's datastore root + `mf.cards`;
# starting in the datastore folder makes the two the same place (as they are for a user running from the
# repository with the default datastore). METAFLOW_CARD_LOCALROOT does not help: with it set, cards are
# written to the datastore root itself, where the Client does not look.


def _client(root: Path):
    from metaflow import metadata, namespace
    metadata(f"local@{root}")
    namespace(None)


@pytest.fixture(scope="module")
def datastore(tmp_path_factory):
    return tmp_path_factory.mktemp("metaflow")


@pytest.fixture(scope="module")
def tiny_run(datastore):
    run_id = run_flow(_env(datastore), datastore, config=TINY)
    _client(datastore)
    from metaflow import Run
    return Run(f"GrowthFlow/{run_id}")


def _data(run, step):
    return run[step].task.data


def test_every_step_ran_and_has_a_card(tiny_run):
    from metaflow.cards import get_cards

    steps = {s.id for s in tiny_run}
    assert steps == {"start", "prepare", "embed", "select_data", "pretrain_small", "join_small", "grow", "train_large",
                     "join_large", "predict_gap", "end"}
    for s in tiny_run:
        for task in s:
            cards = get_cards(task)
            assert len(cards) >= 1, f"{s.id} has no card"
            assert len(cards[0].get()) > 1000


def test_prepare_artifacts(tiny_run):
    d = _data(tiny_run, "prepare")
    assert d.train_tokens.dtype == np.int32 and d.train_tokens.shape[1] == d.seq_len + 1
    assert len(d.train_tokens) == len(d.train_lengths) == len(d.train_texts) > 50
    assert d.val_tokens.shape[1] == d.seq_len + 1 and len(d.val_tokens) > 5
    assert d.vocab_size > 100 and '"model"' in d.tokenizer_json
    assert set(d.source_counts["source"]) >= {"shakespeare", "kjv", "stdlib"}
    docs = d.documents
    assert set(docs[docs.split == "train"].doc_id).isdisjoint(set(docs[docs.split == "val"].doc_id))


def test_select_artifacts(tiny_run):
    d = _data(tiny_run, "select_data")
    n = len(d.train_tokens)
    assert d.embeddings.shape[0] == n and np.isfinite(d.embeddings).all()
    idx, w = d.selection_indices, d.selection_weights
    assert len(idx) == len(w) > 0 and len(np.unique(idx)) == len(idx)
    assert idx.min() >= 0 and idx.max() < n and len(idx) < n
    assert np.all(w > 0) and np.isfinite(w).all()
    assert d.selection["probabilities"].shape == (n,) and abs(d.selection["probabilities"].sum() - 1) < 1e-6
    assert d.selection_assignment.shape == (n,)
    np.testing.assert_array_equal(d.selection["indices"], idx)


def test_models_travel_in_hf_format_and_losses_are_finite(tiny_run, tmp_path):
    small = _data(tiny_run, "join_small")
    assert len(small.small_models) == 2
    assert all(np.isfinite(v) for v in small.small_final_val_loss.values())
    grow = _data(tiny_run, "grow")
    for name, data in grow.grown_model.items():
        (tmp_path / name).write_bytes(data)
    grown = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert grown.config.n_embd == 2 * 32           # two 32-wide small models fused
    assert grow.grow_preservation["max_abs_dlogit"] >= 0
    large = _data(tiny_run, "join_large")
    assert set(large.large_models) == {"grown", "scratch", "control"}
    for arm, curve in large.large_curves.items():
        assert all(np.isfinite(r["val_loss"]) for r in curve)
        assert curve[-1]["val_loss"] < curve[0]["val_loss"]


def test_every_run_has_its_controls_and_one_verdict_per_grown_arm(tiny_run):
    """The control arm spends scratch's FLOPs minus its small model's own (within one step), and join_large
    states a verdict behind the capacity check; the end step never states a speedup the check contradicts."""
    large, small = _data(tiny_run, "join_large"), _data(tiny_run, "join_small")
    plan = large.control_plan
    first = list(small.small_models)[0]
    assert plan["spent_flops"] == pytest.approx(small.small_flops[first])
    control_flops = plan["steps"] * plan["flops_per_step"]
    assert abs(control_flops + plan["spent_flops"] - plan["scratch_flops"]) <= plan["flops_per_step"]
    assert large.large_curves["control"][-1]["step"] == plan["steps"]
    verdict = large.verdict
    assert verdict["capacity_check"]["passed"] in (True, False)
    assert set(verdict["arms"]) == {"grown"}
    row = verdict["arms"]["grown"]
    summary = _data(tiny_run, "end").summary
    assert summary["verdict_grown"] == row["verdict"]
    if verdict["capacity_check"]["passed"]:
        assert row["verdict"] in ("saving", "no saving")
    else:
        assert row["verdict"] == "not assessed: capacity check failed"
        assert row["step_ratio"] is None and "step_ratio_grown" not in summary
        assert "no speedup is stated" in large.verdict_summary


def test_grown_arm_starts_from_its_components_carried_moments(tiny_run):
    """config/tiny.toml sets train_large.grown_optimizer = 'carry': every small model kept its AdamW moments,
    grow mapped them onto every parameter of the grown model, and the grown arm's optimizer started from them."""
    from libs.models import model_from_files
    from libs.optimizer_state import moment_step, moments_from_files

    small, grow = _data(tiny_run, "join_small"), _data(tiny_run, "grow")
    assert set(small.small_moments) == set(small.small_models) and all(small.small_moments.values())
    moments = moments_from_files(grow.grown_moments)
    grown = model_from_files(grow.grown_model)
    for name, param in grown.named_parameters():
        assert moments[f"exp_avg_sq.{name}"].shape == param.shape and float(moments[f"exp_avg_sq.{name}"].min()) >= 0
    assert moment_step(moments) == 20                     # the small models' pretraining steps
    logs = {t.data.large_arm["arm"]: t.stderr for t in tiny_run["train_large"]}
    assert "AdamW state carried over (moments of step 20)" in logs["grown"]
    assert "AdamW state carried over" not in logs["scratch"] + logs["control"]


def test_load_model_from_run(tiny_run):
    from libs.models import load_model_from_run

    model = load_model_from_run(tiny_run, "grown")
    x = torch.randint(0, model.config.vocab_size, (1, 8))
    assert torch.isfinite(model(x).logits).all()
    with pytest.raises(KeyError, match="no large-model arm"):
        load_model_from_run(tiny_run, "nope")


def test_predict_gap_artifacts(tiny_run):
    d = _data(tiny_run, "predict_gap")
    assert {"grown", "scratch"} <= set(d.gap_predictions)
    for arm, row in d.gap_predictions.items():
        assert np.isfinite(row["predicted"]) and np.isfinite(row["measured"])


def test_same_seed_same_selection_and_metrics(tiny_run, datastore):
    """A second run with the same config and seed selects the same rows and measures the same losses."""
    from metaflow import Run

    again = Run(f"GrowthFlow/{run_flow(_env(datastore), datastore, config=TINY)}")
    np.testing.assert_array_equal(_data(again, "select_data").selection_indices,
                                  _data(tiny_run, "select_data").selection_indices)
    assert _data(again, "join_large").large_final_val_loss == _data(tiny_run, "join_large").large_final_val_loss


def _run_cli(args, datastore, **env):
    full_env = {**os.environ, **_env(datastore), **env}
    return subprocess.run([sys.executable, FLOW, *args], cwd=str(datastore), env=full_env, capture_output=True,
                          text=True, timeout=600)


def test_malformed_config_fails_before_any_step(tmp_path, datastore, tiny_run):
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(TINY).read_text().replace("[select]", "[select]\nn_clusterz = 3", 1))
    out = _run_cli(["--config", "config", str(bad), "run"], datastore)
    assert out.returncode != 0
    assert f"{bad}: unknown key 'select.n_clusterz'" in out.stdout + out.stderr
    not_toml = tmp_path / "broken.toml"
    not_toml.write_text("seed = = 1\n")
    out = _run_cli(["--config", "config", str(not_toml), "run"], datastore)
    assert out.returncode != 0 and "not valid TOML" in out.stdout + out.stderr
    # nothing finished was touched: the successful run is still the latest successful one, intact
    _client(datastore)
    from metaflow import Flow
    assert Flow("GrowthFlow").latest_successful_run.successful
    assert len(_data(tiny_run, "select_data").selection_indices) > 0


@pytest.mark.parametrize("override, message", [
    ('sources = []\nfiles = ["/nonexistent/growthflow/*.txt"]', "matched no file"),
    ('sources = []\nfiles = ["{empty}"]', "empty"),
])
def test_bad_data_fails_in_prepare_with_a_clear_error(tmp_path, override, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cfg = tmp_path / "cfg.toml"
    text = Path(TINY).read_text()
    cfg.write_text(text.replace('sources = ["shakespeare", "kjv", "stdlib"]', override.format(empty=empty), 1))
    out = _run_cli(["--config", "config", str(cfg), "run"], tmp_path)
    assert out.returncode != 0
    assert message in (out.stdout + out.stderr)


BARE_CLIENT = """
import sys
from metaflow import Flow, metadata, namespace
metadata("local@" + sys.argv[1]); namespace(None)
run = Flow("GrowthFlow")[sys.argv[2]]
n = 0
for step in run:
    for task in step:
        for artifact in task:
            artifact.data          # unpickles: fails if it needs a class of this repository or a heavy library
            n += 1
assert "torch" not in sys.modules and "libs" not in sys.modules and "steps" not in sys.modules
print("artifacts read:", n)
"""


def test_every_artifact_opens_in_a_bare_environment(tiny_run, datastore, tmp_path_factory):
    """Only metaflow, numpy and pandas (with pyarrow, pandas 3's string storage) installed, the repository nowhere
    on the path: every artifact of every
    task of a run loads through the Client API (plain data, no project classes)."""
    import venv

    bare = tmp_path_factory.mktemp("bare_env")
    venv.create(bare, with_pip=True)
    python = str(bare / "bin" / "python")
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip() in ("metaflow", "numpy", "pandas", "pyarrow"):
            pins[name.strip()] = f"{name.strip()}=={version.strip()}"
    # pyarrow: pandas 3 stores string columns with it by default, so unpickling any DataFrame with text needs it
    assert len(pins) == 4, "requirements.txt must pin metaflow, numpy, pandas and pyarrow"
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", *pins.values()], capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    out = subprocess.run([python, "-I", "-c", BARE_CLIENT, str(datastore), tiny_run.id], capture_output=True,
                         text=True, timeout=600, cwd=str(tmp_path_factory.mktemp("elsewhere")),
                         env={"USER": "test", "PATH": os.environ.get("PATH", ""), "HOME": str(bare)})
    assert out.returncode == 0, out.stderr[-5000:]
    assert "artifacts read:" in out.stdout
