"""Data-parallel train_large through metaflow-torchrun: single node (run here, gloo on CPU), multi-node (compiled).

* ``train_large.nproc_per_node = 2`` launches ``steps/train_large_ddp.py`` on 2 CPU processes
  through metaflow-torchrun's ``TorchrunSingleNodeMultiGPU().run`` (the launcher the flow
  passes) and gets the same losses as the one-process ``steps.train_large.run`` with the same
  global batch (2 x 4 rows vs 1 x 8), within 1e-4 relative after 20 steps.
* A 2-process run crashed part-way (the test-only ``GROWTHFLOW_FAIL_AT_STEP`` switch, which
  every rank reads) resumes from its checkpoint's step and ends at the uninterrupted loss.
* Bad settings fail with messages that name the key.
* A minimal ``num_parallel`` + ``@torchrun`` + ``@kubernetes(gpu=...)`` flow
  (tests/flows/torchrun_multinode_flow.py) compiles for Argo Workflows into a multi-node
  JobSet: local multi-node runs are broken in metaflow 2.19.39 + metaflow-torchrun 0.2.2,
  so compilation is what can be checked here.
"""

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from libs.models import ModelSpec, build_model, model_from_files, model_to_files
from libs.schema import ConfigError
from libs.training import TrainConfig
from steps import train_large
from libs.token_data import TokenData
from steps.config import load_config
from tests.test_scale_out import BUCKET, _env, _run, s3_on_loopback  # noqa: F401  (s3_on_loopback: a fixture)

ROOT = Path(__file__).resolve().parent.parent
V, L = 64, 33                      # vocabulary, row length (seq_len + 1)
TRAIN = TrainConfig(steps=20, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=10, eval_batches=0,
                    checkpoint_every=10, device="cpu")
SINGLE = train_large.TrainLargeConfig(train=TRAIN, arms=("grown",))
DDP = dataclasses.replace(SINGLE, nproc_per_node=2, train=dataclasses.replace(TRAIN, batch_size=4))


def _tokens(seed: int, n: int):
    """Rows of a random Markov chain (4 successors per token): something to learn. (n, L) int32, (n,)."""
    table = np.random.default_rng(0).integers(0, V, (V, 4))
    rng = np.random.default_rng(seed)
    tokens = np.empty((n, L), dtype=np.int32)
    tokens[:, 0] = rng.integers(0, V, n)
    for t in range(L - 1):
        tokens[:, t + 1] = table[tokens[:, t], rng.integers(0, 4, n)]
    return tokens, rng.integers(8, L + 1, n).astype(np.int32)


@pytest.fixture(scope="module")
def inputs():
    train_tokens, train_lengths = _tokens(1, 80)
    val_tokens, val_lengths = _tokens(2, 24)
    grown = build_model(ModelSpec(n_layer=1, n_embd=32, n_head=2), vocab_size=V, n_positions=L, seed=0)
    indices = np.arange(0, 80, 2)[::-1].copy()                  # a selected subset, not in order
    data = TokenData(train_tokens=train_tokens, train_lengths=train_lengths, val_tokens=val_tokens,
                     val_lengths=val_lengths, train_sources=np.array(["x"] * len(train_tokens)), vocab_size=V,
                     seq_len=L - 1, bos_id=0, eos_id=0)
    return dict(init_files=model_to_files(grown), data=data, indices=indices,
                weights=np.linspace(0.5, 2.0, len(indices)), seed=0, progress=False)


def _torchrun_launcher():
    """What the flow passes: metaflow-torchrun's single-node launcher."""
    from metaflow import TorchrunSingleNodeMultiGPU

    return TorchrunSingleNodeMultiGPU().run


@pytest.fixture(scope="module")
def single(inputs):
    torch.set_num_threads(1)
    return train_large.run(SINGLE, "grown", **inputs)


@pytest.fixture(scope="module")
def ddp(inputs, tmp_path_factory):
    checkpoint_dir = tmp_path_factory.mktemp("ddp_checkpoint")
    return train_large.run(DDP, "grown", checkpoint_dir=str(checkpoint_dir), launch=_torchrun_launcher(), **inputs)


# ---------------------------------------------------------------------------------------------
# single node, 2 CPU processes (gloo)


def test_two_torchrun_processes_match_one_process(single, ddp):
    assert ddp.arm == single.arm == "grown"
    assert [r["step"] for r in ddp.curve] == [r["step"] for r in single.curve] == [0, 10, 20]
    assert ddp.n_tokens == single.n_tokens                                # the same global batches
    np.testing.assert_allclose([r["val_loss"] for r in ddp.curve], [r["val_loss"] for r in single.curve],
                               rtol=1e-4)
    np.testing.assert_allclose(ddp.final_val_loss, single.final_val_loss, rtol=1e-4)
    np.testing.assert_allclose(ddp.final_train_loss, single.final_train_loss, rtol=1e-4)
    assert ddp.final_val_loss < single.curve[0]["val_loss"] - 0.1         # it trained
    assert ddp.device == "cpu x2 (DDP, gloo)" and single.device == "cpu"
    assert ddp.resumed_from_step == 0 and ddp.tokens_per_s > 0


def test_ddp_result_has_the_one_process_structure(single, ddp):
    """Same artifact fields and types; the model rank 0 wrote back is the trained one."""
    for field in dataclasses.fields(train_large.TrainLargeResult):
        a, b = getattr(single, field.name), getattr(ddp, field.name)
        assert type(a) is type(b), field.name
    assert set(ddp.model_files) == set(single.model_files)
    assert set(ddp.gap_features) == set(single.gap_features)
    assert ddp.n_params == single.n_params and ddp.flops_per_step == single.flops_per_step
    a, b = model_from_files(single.model_files), model_from_files(ddp.model_files)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=name)
    assert len(train_large.report(ddp)) == len(train_large.report(single))


def test_ddp_resumes_from_its_checkpoint(inputs, ddp, tmp_path, monkeypatch, capfd):
    from metaflow.exception import MetaflowException

    launch = _torchrun_launcher()
    monkeypatch.setenv(train_large.FAIL_ENV, "grown:12")                 # every rank stops after step 12
    with pytest.raises(MetaflowException, match="return code"):
        train_large.run(DDP, "grown", checkpoint_dir=str(tmp_path), launch=launch, **inputs)
    assert "injected failure at step 12 of arm grown" in capfd.readouterr().err
    assert (tmp_path / "step-00000010" / "MANIFEST.json").exists()       # rank 0 saved step 10
    monkeypatch.delenv(train_large.FAIL_ENV)
    resumed = train_large.run(DDP, "grown", checkpoint_dir=str(tmp_path), launch=launch, **inputs)
    assert resumed.resumed_from_step == 10
    assert resumed.n_tokens == ddp.n_tokens
    np.testing.assert_allclose(resumed.final_val_loss, ddp.final_val_loss, rtol=1e-6)
    np.testing.assert_allclose([r["val_loss"] for r in resumed.curve], [r["val_loss"] for r in ddp.curve],
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# clear errors


def test_nproc_per_node_below_one_is_rejected():
    with pytest.raises(ConfigError, match=r"x.toml: key 'train_large.nproc_per_node' has value 0; "
                                          r"allowed: a number >= 1"):
        load_config({"train_large": {"nproc_per_node": 0}}, source="x.toml")
    with pytest.raises(ConfigError, match="key 'train_large.ddp_backend' has value 'mpi'"):
        load_config({"train_large": {"ddp_backend": "mpi"}}, source="x.toml")
    assert load_config({"train_large": {"nproc_per_node": 4}}).train_large.nproc_per_node == 4
    assert load_config({}).train_large.nproc_per_node == 1                # the default: one process


def test_more_processes_than_gpus_names_the_key(inputs, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = dataclasses.replace(DDP, train=dataclasses.replace(DDP.train, device="auto"))
    with pytest.raises(ConfigError, match=r"train_large.nproc_per_node=2 .* has 1 CUDA GPU\(s\)"):
        train_large.run(cfg, "grown", launch=lambda **kw: pytest.fail("launched anyway"), **inputs)
    assert train_large.resolve_backend(dataclasses.replace(cfg, nproc_per_node=1))[:2] == ("nccl", "cuda")


def test_nccl_on_cpu_and_a_missing_launcher_are_clear(inputs):
    with pytest.raises(ConfigError, match="ddp_backend='nccl' needs CUDA GPUs"):
        train_large.run(dataclasses.replace(DDP, ddp_backend="nccl"), "grown",
                        launch=lambda **kw: pytest.fail("launched anyway"), **inputs)
    with pytest.raises(ValueError, match="nproc_per_node=2 needs a launcher"):
        train_large.run(DDP, "grown", **inputs)


def test_rank_module_runs_from_anywhere(tmp_path):
    """``python -m steps.train_large_ddp`` (what torchrun runs with --module) from another folder, nothing on
    PYTHONPATH: it imports the installed project and gets as far as reading its inputs."""
    import subprocess

    assert train_large.RANK_MODULE == "steps.train_large_ddp" and "module" in train_large.TORCHRUN_ARGS
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", train_large.RANK_MODULE, "--work-dir",
                          str(tmp_path / "nothing")], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "ImportError" not in out.stderr and "ModuleNotFoundError" not in out.stderr, out.stderr[-3000:]
    assert "FileNotFoundError" in out.stderr and "inputs.json" in out.stderr, out.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# several nodes: num_parallel + @torchrun, compiled for Argo Workflows (a JobSet)

MULTINODE_FLOW = ROOT / "tests" / "flows" / "torchrun_multinode_flow.py"


@pytest.fixture(scope="module")
def multinode_template(s3_on_loopback, tmp_path_factory):
    endpoint, _ = s3_on_loopback
    tmp_path = tmp_path_factory.mktemp("argo_multinode")
    env = _env(tmp_path, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"),
               METAFLOW_DEFAULT_DATASTORE="s3", METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{BUCKET}/metaflow",
               METAFLOW_S3_ENDPOINT_URL=endpoint, METAFLOW_KUBERNETES_NAMESPACE="growthflow",
               METAFLOW_KUBERNETES_CONTAINER_IMAGE="registry.example/growthflow:test")
    out = _run([MULTINODE_FLOW, "--datastore", "s3", "argo-workflows", "create", "--only-json"], env)
    return json.loads(out.stdout[out.stdout.index("{"):])


def _jobset(manifest: str) -> dict:
    """The JobSet manifest as a dict (Argo's {{...}} expressions replaced by markers first: they are not YAML)."""
    import re

    import yaml

    markers = {}

    def mark(match):
        markers.setdefault(match.group(0), f"ARGO_EXPR_{len(markers)}")
        return markers[match.group(0)]

    parsed = yaml.safe_load(re.sub(r"\{\{.*?\}\}", mark, manifest))
    return parsed, {v: k for k, v in markers.items()}


def test_argo_compiles_torchrun_num_parallel_into_a_multinode_jobset(multinode_template, s3_on_loopback):
    from tests.flows.torchrun_multinode_flow import GPUS_PER_NODE

    templates = {t["name"]: t for t in multinode_template["spec"]["templates"]}
    for step in ("start", "join", "end"):
        assert "container" in templates[step], f"{step} is not a plain pod"
    train = templates["train"]
    assert "container" not in train and train["resource"]["action"] == "create"
    jobset, exprs = _jobset(train["resource"]["manifest"])
    assert jobset["apiVersion"].startswith("jobset.x-k8s.io/") and jobset["kind"] == "JobSet"
    jobs = {j["name"]: j for j in jobset["spec"]["replicatedJobs"]}
    assert set(jobs) == {"control", "worker"}                              # node 0 + the other nodes
    assert jobs["control"]["replicas"] == 1
    assert exprs[jobs["worker"]["replicas"]] == "{{=asInt(inputs.parameters.workerCount)}}"
    worker_count = {p["name"]: p.get("value") for p in
                    templates["start-foreach-parallel"]["dag"]["tasks"][0]["arguments"]["parameters"]}
    assert worker_count["workerCount"] == "{{=sprig.int(sprig.sub(sprig.int(inputs.parameters['num-parallel']),1))}}"
    for name, job in jobs.items():
        container = job["template"]["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(GPUS_PER_NODE)   # @kubernetes(gpu=2)
        assert " step train " in container["command"][-1]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["UBF_CONTEXT"] == {"control": "ubf_control", "worker": "ubf_task"}[name]
        assert "MF_WORLD_SIZE" in env and env["MF_MASTER_ADDR"].endswith(".growthflow.svc.cluster.local")
    # num_parallel is decided by the start step at run time: it hands Argo the node count
    main = templates[multinode_template["spec"]["entrypoint"]]["dag"]["tasks"]
    fan = {t["name"]: t for t in main}["start-foreach-parallel"]
    assert fan["withParam"] == "{{tasks.start.outputs.parameters.num-splits}}"
    assert "num-parallel" in {p["name"] for p in templates["start"]["outputs"]["parameters"]}
    # the pods get the entry script and the metaflow-torchrun extension (@torchrun) in the code package
    import io
    import tarfile

    _, client = s3_on_loopback
    url = {e["name"]: e.get("value") for e in
           jobs["control"]["template"]["spec"]["template"]["spec"]["containers"][0]["env"]}["METAFLOW_CODE_URL"]
    blob = client.get_object(Bucket=BUCKET, Key=url[len(f"s3://{BUCKET}/"):])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        names = tar.getnames()
    assert {"torchrun_multinode_flow.py", "ddp_allreduce.py"} <= set(names)
    assert any("metaflow_extensions/torchrun" in n for n in names), "the @torchrun extension is not packaged"


# ---------------------------------------------------------------------------------------------
# end to end: GrowthFlow on config/tiny.toml with train_large.nproc_per_node = 2


@pytest.mark.slow
def test_growth_flow_trains_train_large_on_two_processes(tmp_path):
    from metaflow import Run, Runner, metadata, namespace

    tiny = (ROOT / "config" / "tiny.toml").read_text()
    assert "[train_large]\ncontrol_warmup_steps = 0\n" in tiny
    config = tmp_path / "tiny_ddp.toml"
    config.write_text(tiny.replace("[train_large]\ncontrol_warmup_steps = 0\n",
                                   "[train_large]\ncontrol_warmup_steps = 0\nnproc_per_node = 2\n"))
    env = {"USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    with Runner(str(ROOT / "flows" / "growth_flow.py"), show_output=False, env=env, cwd=str(tmp_path),
                config=[("config", str(config))]).run() as running:
        assert running.status == "successful", running.stderr[-5000:]
        run_id = running.run.id
        log = running.stdout + running.stderr
    metadata(f"local@{tmp_path}")
    namespace(None)
    run = Run(f"GrowthFlow/{run_id}")
    results = {t.data.large_arm["arm"]: t.data.large_arm for t in run["train_large"]}   # plain dicts
    assert set(results) == {"grown", "scratch", "control"}
    for arm, result in results.items():
        assert result["device"] == "cpu x2 (DDP, gloo)", arm
        if arm != "control":                        # the control trains its own, FLOP-matched number of steps
            assert [r["step"] for r in result["curve"]] == [0, 5, 10, 15, 20]
        assert np.isfinite(result["final_val_loss"]) and result["model_files"]
    join = run["join_large"].task.data
    assert set(join.large_final_val_loss) == {"grown", "scratch", "control"}
    assert run["end"].task.data.summary_text
    assert "CPU is for testing" in log and "live loss card is skipped" in log
