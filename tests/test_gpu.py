"""The GPU path of the training loop (bf16 autocast, fused AdamW, torch.compile), and the throughput benchmark.

The CUDA tests skip cleanly on a machine without a GPU (CI has none); the benchmark's CPU path
runs everywhere, so the script the GPU figures come from cannot rot unnoticed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from libs.models import ModelSpec, build_model
from libs.training import TrainConfig, train_model

ROOT = Path(__file__).resolve().parent.parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")
V, L = 64, 33


def _data(seed, n):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (n, L)).astype(np.int32)
    tokens[:, 1::2] = tokens[:, 0:-1:2]              # every other token repeats: learnable
    return tokens, np.full(n, L, dtype=np.int32)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("compile_", [False, True])
def test_bf16_training_on_cuda_learns(compile_):
    tt, tl = _data(0, 128)
    vt, vl = _data(1, 32)
    model = build_model(ModelSpec(n_layer=2, n_embd=64, n_head=2), vocab_size=V, n_positions=L, seed=0)
    cfg = TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=30, eval_batches=0,
                      device="cuda", bf16=True, compile=compile_)
    result = train_model(model, tt, tl, vt, vl, cfg, seed=0, progress=False)
    assert result.device.startswith("cuda")
    assert all(np.isfinite([r["val_loss"] for r in result.curve]))
    assert result.final_val_loss < result.curve[0]["val_loss"] - 0.3
    assert next(model.parameters()).device.type == "cpu"        # handed back on the CPU, float32
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.gpu
@needs_cuda
def test_bf16_stays_close_to_fp32_on_cuda():
    tt, tl = _data(0, 64)
    vt, vl = _data(1, 16)
    finals = []
    for bf16 in (False, True):
        model = build_model(ModelSpec(n_layer=1, n_embd=32, n_head=2), vocab_size=V, n_positions=L, seed=0)
        cfg = TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=3, eval_every=30, eval_batches=0,
                          device="cuda", bf16=bf16)
        finals.append(train_model(model, tt, tl, vt, vl, cfg, seed=0, progress=False).final_val_loss)
    assert abs(finals[0] - finals[1]) / finals[0] < 0.05


def test_throughput_benchmark_runs_and_reports_its_figures(tmp_path):
    out = tmp_path / "throughput.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_throughput.py"), "--config",
                           str(ROOT / "config" / "tiny.toml"), "--steps", "4", "--warmup-steps", "1", "--device",
                           "cpu", "--threads", "1", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report == json.loads(proc.stdout)
    assert [(v["precision"], v["attention"]) for v in report["variants"]] == [("fp32", "eager"), ("fp32", "sdpa")]
    for v in report["variants"]:
        assert v["tokens_per_s"] > 0 and v["flops_per_token"] > 0 and np.isfinite(v["final_train_loss"])
        assert v["mfu"] is None                       # no agreed CPU peak without --peak-tflops
    assert report["model"]["n_embd"] == 64            # tiny: two 32-wide small models fused
    assert report["mfu_goal_met"] is None


def test_known_gpu_peaks():
    from bench.bench_throughput import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3", None)[0] == pytest.approx(989.4)
    assert peak_tflops("NVIDIA H100 PCIe", None)[0] == pytest.approx(756.0)
    assert peak_tflops("NVIDIA A100-SXM4-80GB", None)[0] == pytest.approx(312.0)
    assert peak_tflops("Some New GPU", None)[0] is None
    assert peak_tflops("Some New GPU", 100.0) == (100.0, "--peak-tflops")
