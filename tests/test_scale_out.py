"""GrowthFlow can leave this machine: its code package, and its Argo Workflows compilation.

* The code package (what ``--with kubernetes``, ``--with batch`` and Argo pods download)
  holds ``libs/``, ``steps/`` and ``config/`` beside the flow file, and the flow imports and
  lists its steps from the extracted package alone, set up the way a pod sets it up.
* ``argo-workflows create --only-json`` compiles offline against an S3 server on loopback
  (moto): one template per step, the two foreach fan-outs, and the GPU request of
  ``train_large`` read from the config's ``resources.train_large`` section.

Nothing here needs a cluster. The Argo test needs ``moto`` and ``kubernetes<37`` (both in
requirements.txt) and is skipped, loudly, only where they are not installed.
"""

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "flows" / "growth_flow.py"
STEPS = ["start", "prepare", "embed", "select_data", "pretrain_small", "join_small", "grow", "train_large",
         "join_large", "predict_gap", "end"]
FOREACH = {"select_data": "pretrain_small", "grow": "train_large"}   # fan-out step -> its foreach body
BUCKET = "growthflow-test"


def _env(tmp_path: Path, **extra) -> dict:
    """This machine's environment without any Metaflow/AWS settings of its own, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("METAFLOW_", "AWS_")) and k not in ("PYTHONPATH", "KUBECONFIG")}
    home = tmp_path / "metaflow_home"                   # no ~/.metaflowconfig leaks in
    home.mkdir(exist_ok=True)
    env.update({"USER": "test", "METAFLOW_HOME": str(home), "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path),
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _run(args, env, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *map(str, args)], cwd=str(cwd), env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, args))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def _project_files() -> list[Path]:
    """The files remote tasks need beside the flow file: every module of libs/ and steps/, every config."""
    files = [p for pattern in ("libs/**/*.py", "steps/**/*.py", "config/**/*.toml") for p in ROOT.glob(pattern)]
    return sorted(p for p in files if "__pycache__" not in p.parts)


# ---------------------------------------------------------------------------------------------
# code package


def test_package_list_names_every_project_file(tmp_path):
    out = _run([FLOW, "package", "list"], _env(tmp_path))
    listed = {line.strip() for line in (out.stdout + out.stderr).splitlines()}   # Metaflow echoes to stderr
    expected = _project_files()
    assert any("libs" in p.parts for p in expected) and any(p.suffix == ".toml" for p in expected)
    missing = [str(p.relative_to(ROOT)) for p in expected if str(p) not in listed]
    assert not missing, f"`package list` lacks {missing}: flows/project_code.py must add them"
    assert str(FLOW) in listed


def test_code_package_runs_from_its_own_folder(tmp_path):
    """Extract the saved package and use it the way a pod does: PYTHONPATH=.mf_code, config kv.config."""
    package = tmp_path / "job.tgz"
    _run([FLOW, "package", "save", package], _env(tmp_path))
    pod = tmp_path / "pod"
    with tarfile.open(package) as tar:
        names = set(tar.getnames())
        tar.extractall(pod, filter="data")
    wanted = {f".mf_code/{p.relative_to(ROOT)}" for p in _project_files()} | {"growth_flow.py"}
    assert not wanted - names, f"missing from the code package: {sorted(wanted - names)}"

    env = _env(tmp_path, PYTHONPATH=str(pod / ".mf_code"))
    shown = _run(["growth_flow.py", "--config-value", "config", "kv.config", "show"], env, cwd=pod)
    text = shown.stdout + shown.stderr
    for step in STEPS:
        assert f"Step {step}" in text, f"the packaged flow does not list step {step}:\n{text[-2000:]}"

    probe = ("import libs.training, steps.train_large, steps.config\n"
             "print(libs.training.__file__)\n"
             "print(steps.config.load_config_file('.mf_code/config/tiny.toml').seed)\n")
    out = _run(["-c", probe], env, cwd=pod)
    module_file, seed = out.stdout.split()
    assert Path(module_file).resolve().is_relative_to(pod.resolve()), \
        f"libs.training came from {module_file}, not from the package"
    assert seed.isdigit()


# ---------------------------------------------------------------------------------------------
# Argo Workflows


@pytest.fixture(scope="module")
def s3_on_loopback():
    """An S3-compatible server (moto) on 127.0.0.1 with one empty bucket; stopped after the module."""
    reasons = []
    for module in ("moto.server", "kubernetes", "boto3"):
        try:
            __import__(module)
        except ImportError as exc:
            reasons.append(f"{module} ({exc})")
    if reasons:
        pytest.skip("SKIPPED LOUDLY: the Argo Workflows compile test needs moto[s3], flask, flask-cors, "
                    f"kubernetes<37 and boto3 (requirements.txt); not importable: {', '.join(reasons)}")
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:                        # a free loopback port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
                       "region_name": "us-east-1"}
        client = boto3.client("s3", endpoint_url=endpoint, **credentials)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def argo_template(s3_on_loopback, tmp_path_factory):
    """The WorkflowTemplate compiled from a config that asks for 2 GPUs, 6 CPUs and 24 GB for train_large."""
    endpoint, _ = s3_on_loopback
    tmp_path = tmp_path_factory.mktemp("argo")
    config = tmp_path / "two_gpus.toml"                  # every other key keeps its default
    config.write_text("[resources.train_large]\ncpu = 6\nmemory = 24000\ngpu = 2\n")
    env = _env(tmp_path, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"),
               METAFLOW_DEFAULT_DATASTORE="s3", METAFLOW_DATASTORE_SYSROOT_S3=f"s3://{BUCKET}/metaflow",
               METAFLOW_S3_ENDPOINT_URL=endpoint, METAFLOW_KUBERNETES_NAMESPACE="growthflow",
               METAFLOW_KUBERNETES_CONTAINER_IMAGE="registry.example/growthflow:test")
    out = _run([FLOW, "--config", "config", config, "--datastore", "s3",
                "argo-workflows", "create", "--only-json"], env)
    start = out.stdout.index("{")                      # progress lines precede the JSON
    return json.loads(out.stdout[start:])


def _templates(workflow: dict) -> dict:
    return {t["name"]: t for t in workflow["spec"]["templates"]}


def _k8s(step: str) -> str:
    return step.replace("_", "-")


def test_argo_has_one_container_template_per_step(argo_template):
    assert argo_template["kind"] == "WorkflowTemplate"
    templates = _templates(argo_template)
    containers = {name for name, t in templates.items()
                  if "container" in t and t["container"]["command"][-1].count(" step ")}
    assert containers == {_k8s(s) for s in STEPS}
    for step in STEPS:
        container = templates[_k8s(step)]["container"]
        assert container["image"] == "registry.example/growthflow:test"
        assert "growth_flow.py" in container["command"][-1] and f" step {step} " in container["command"][-1]
    assert '"graph_structure"' in argo_template["metadata"]["annotations"]["metaflow/dag"]


def test_argo_foreach_fan_outs_and_joins(argo_template):
    templates = _templates(argo_template)
    main = templates[argo_template["spec"]["entrypoint"]]["dag"]["tasks"]
    by_name = {t["name"]: t for t in main}
    for split, body in FOREACH.items():
        fan = [t for t in main if t.get("withParam") == f"{{{{tasks.{_k8s(split)}.outputs.parameters.num-splits}}}}"]
        assert len(fan) == 1, f"no foreach fan-out after {split}"
        inner = templates[fan[0]["template"]]["dag"]["tasks"]
        assert [t["template"] for t in inner] == [_k8s(body)]
        params = {p["name"] for p in templates[_k8s(split)]["outputs"]["parameters"]}
        assert {"num-splits", "split-cardinality"} <= params
        join = {"pretrain_small": "join_small", "train_large": "join_large"}[body]
        assert by_name[_k8s(join)]["depends"] == f"{fan[0]['name']}.Succeeded"


def test_argo_resources_come_from_the_config(argo_template):
    templates = _templates(argo_template)
    large = templates["train-large"]["container"]["resources"]
    assert large["limits"]["nvidia.com/gpu"] == "2"
    assert float(large["requests"]["cpu"]) == 6
    assert large["requests"]["memory"].startswith("24000")
    assert templates["train-large"]["retryStrategy"]["limit"] == 1          # @retry(times=1)
    for step in STEPS:
        if step != "train_large":
            limits = templates[_k8s(step)]["container"]["resources"].get("limits") or {}
            assert int(limits.get("nvidia.com/gpu", 0)) == 0, f"{step} asks for a GPU"


def test_argo_pods_get_the_code_package_and_the_config(argo_template, s3_on_loopback):
    """The package the pods download (uploaded to S3 at compile time) holds the code and the run's config."""
    _, client = s3_on_loopback
    env = {e["name"]: e.get("value") for e in _templates(argo_template)["train-large"]["container"]["env"]}
    assert json.loads(env["METAFLOW_FLOW_CONFIG_VALUE"]) == {"config": "kv.config"}
    url = env["METAFLOW_CODE_URL"]
    assert url.startswith(f"s3://{BUCKET}/metaflow/GrowthFlow/")
    key = url[len(f"s3://{BUCKET}/"):]
    blob = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        names = set(tar.getnames())
        packaged_config = json.load(tar.extractfile(".mf_meta/CONFIG"))
    assert {".mf_code/libs/training.py", ".mf_code/steps/train_large.py", ".mf_code/config/default.toml",
            "growth_flow.py"} <= names
    config = packaged_config["user_configs"]["config"][0]
    assert config["resources"]["train_large"]["gpu"] == 2
