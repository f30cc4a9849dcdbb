"""Checkpoint safety (libs.checkpoints through libs.training.train_model), without Metaflow.

* A crashed run resumes from its newest checkpoint and ends bit-identical to an uninterrupted one.
* A truncated, altered or mismatched checkpoint is named in a warning, set aside into
  ``rejected/``, and training falls back to the previous checkpoint (or step 0).
* A planted pickle (an old ``checkpoint.pt``, or a pickle under a checkpoint's file name with
  a forged manifest) runs nothing.
* Old checkpoints are pruned to ``keep_checkpoints``; all are removed after a successful run
  unless ``remove_checkpoints_on_success`` is off; a half-written checkpoint is never loaded.
"""

import dataclasses
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from libs import checkpoints as ck
from libs.models import ModelSpec, build_model
from libs.training import TrainConfig, train_model

V, L = 48, 25
CFG = TrainConfig(steps=20, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=5, eval_batches=2,
                  checkpoint_every=5, keep_checkpoints=2, remove_checkpoints_on_success=False, device="cpu")


def _data(seed, n):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (n, L)).astype(np.int32)
    tokens[:, 1::2] = tokens[:, 0:-1:2]
    return tokens, rng.integers(6, L + 1, n).astype(np.int32)


TT, TL = _data(0, 40)
VT, VL = _data(1, 16)


def _model(tied=True):
    return build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2, tie_embeddings=tied), vocab_size=V,
                       n_positions=L, seed=0)


class Crash(Exception):
    pass


def _crash_at(step):
    def on_step(done):
        if done == step:
            raise Crash(done)
    return on_step


def _train(cfg=CFG, checkpoint_dir=None, **kw):
    return train_model(_model(), TT, TL, VT, VL, cfg, seed=1, checkpoint_dir=checkpoint_dir, progress=False, **kw)


@pytest.fixture(scope="module")
def reference():
    return _train()


def _crashed_dir(tmp_path, step=17, cfg=CFG):
    with pytest.raises(Crash):
        _train(cfg, tmp_path, on_step=_crash_at(step))
    return tmp_path


def test_format_is_safetensors_and_json_with_a_manifest(tmp_path):
    saved = []
    with pytest.raises(Crash):
        _train(CFG, tmp_path, on_step=_crash_at(12), on_checkpoint=saved.append)
    assert saved == [str(tmp_path / "step-00000005"), str(tmp_path / "step-00000010")]
    folder = tmp_path / "step-00000010"
    assert sorted(p.name for p in folder.iterdir()) == ["MANIFEST.json", "arrays.safetensors",
                                                        "model.safetensors", "optimizer.safetensors", "state.json"]
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert manifest["format"] == ck.FORMAT and manifest["step"] == 10
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]
    assert not list(tmp_path.glob(".tmp-*"))                    # written atomically: no temporary left
    for name in ("model.safetensors", "optimizer.safetensors", "arrays.safetensors"):
        assert not (folder / name).read_bytes().startswith(b"\x80")   # not a pickle stream


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, reference):
    _crashed_dir(tmp_path, 17)
    resumed = _train(CFG, tmp_path)
    assert resumed.resumed_from_step == 15
    assert resumed.curve == reference.curve                      # every record, train loss included
    assert resumed.n_tokens == reference.n_tokens


def test_truncated_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, reference, capfd):
    _crashed_dir(tmp_path, 17)                                    # keeps step 10 and step 15
    model_file = tmp_path / "step-00000015" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:1000])        # truncated
    capfd.readouterr()
    resumed = _train(CFG, tmp_path)
    err = capfd.readouterr().err
    assert f"skipping checkpoint {tmp_path / 'step-00000015'} (step 15)" in err
    assert "model.safetensors has 1000 bytes" in err and "set aside as" in err
    assert resumed.resumed_from_step == 10
    assert resumed.curve == reference.curve
    rejected = list((tmp_path / "rejected").iterdir())
    assert len(rejected) == 1 and rejected[0].name.startswith("step-00000015.")


def test_every_bad_checkpoint_set_aside_means_step_zero(tmp_path, reference, capfd):
    _crashed_dir(tmp_path, 17)
    state = tmp_path / "step-00000015" / "state.json"
    state.write_bytes(state.read_bytes().replace(b'"n_tokens": ', b'"n_tokens":9', 1))   # same size, altered
    (tmp_path / "step-00000010" / "MANIFEST.json").unlink()                  # incomplete
    resumed = _train(CFG, tmp_path)
    err = capfd.readouterr().err
    assert "state.json does not match its SHA-256" in err and "no MANIFEST.json" in err
    assert resumed.resumed_from_step == 0 and resumed.curve == reference.curve
    assert len(list((tmp_path / "rejected").iterdir())) == 2


def test_checkpoint_of_another_configuration_is_named_and_not_loaded(tmp_path, capfd):
    _crashed_dir(tmp_path, 12)
    other = _train(dataclasses.replace(CFG, lr=1e-3), tmp_path)
    assert other.resumed_from_step == 0
    assert "belongs to another configuration" in capfd.readouterr().err


class _Planted:
    """Unpickling this creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_runs_nothing(tmp_path, capfd):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    _crashed_dir(ckpt, 12)                                        # step 5 and step 10
    payload = pickle.dumps(_Planted(str(marker)))
    # 1) an old-format checkpoint.pt (what torch.load(weights_only=False) used to read)
    (ckpt / "checkpoint.pt").write_bytes(payload)
    # 2) a pickle in place of step 10's weights, with a forged manifest that matches it
    folder = ckpt / "step-00000010"
    (folder / "model.safetensors").write_bytes(payload)
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    manifest["files"]["model.safetensors"] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    resumed = _train(CFG, ckpt)
    err = capfd.readouterr().err
    assert not marker.exists()                                     # nothing was unpickled
    assert f"ignoring {ckpt / 'checkpoint.pt'}: an old pickle-format checkpoint, never loaded" in err
    assert f"skipping checkpoint {folder} (step 10)" in err and "unreadable" in err
    assert resumed.resumed_from_step == 5
    pickle.loads(payload)                                          # the payload is live: the check can fail
    assert marker.exists()


def test_half_written_checkpoint_is_never_loaded(tmp_path):
    _crashed_dir(tmp_path, 12)
    (tmp_path / ".tmp-step-00000015-123").mkdir()                   # a crash mid-write leaves only this
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [10, 5]
    assert _train(CFG, tmp_path).resumed_from_step == 10


def test_pruning_keeps_the_newest_n_and_success_removes_them(tmp_path):
    cfg = dataclasses.replace(CFG, checkpoint_every=2, keep_checkpoints=3)
    _crashed_dir(tmp_path / "a", 19, cfg)
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "a")] == [18, 16, 14]
    _crashed_dir(tmp_path / "b", 19, dataclasses.replace(cfg, keep_checkpoints=0))      # 0 keeps all
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "b")] == [18, 16, 14, 12, 10, 8, 6, 4, 2]
    done = _train(dataclasses.replace(cfg, remove_checkpoints_on_success=True), tmp_path / "a")
    assert done.resumed_from_step == 18
    assert ck.list_checkpoints(tmp_path / "a") == []               # removed once training finished
    _train(cfg, tmp_path / "c")                                     # remove_checkpoints_on_success = False
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "c")] == [18, 16, 14]


def test_untied_and_tied_weights_round_trip_exactly(tmp_path):
    for tied in (True, False):
        model = _model(tied)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
        opt.step()
        path = ck.save_checkpoint(tmp_path / str(tied), 3, fingerprint="f", model=model, optimizer=opt,
                                  state={"x": 1}, arrays={"order": np.arange(5)})
        got = ck.read_checkpoint(path, "f")
        for k, v in model.state_dict().items():
            assert torch.equal(got.model[k], v), k
        want = opt.state_dict()
        assert got.optimizer["param_groups"][0]["betas"] == want["param_groups"][0]["betas"]
        for idx, st in want["state"].items():
            for name, value in st.items():
                assert torch.equal(got.optimizer["state"][idx][name], value)
        assert got.state["x"] == 1 and got.arrays["order"].tolist() == list(range(5))
        with pytest.raises(ck.CheckpointError, match="belongs to another configuration"):
            ck.read_checkpoint(path, "g")
