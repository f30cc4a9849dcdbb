"""flows/cli_checks.py through the real command line: wrong commands fail in one line, before any run exists.

The commands run as users type them (``python flows/growth_flow.py ...``) in a temporary datastore.
The run-free checks come first; the others share one ``config/tiny.toml`` run (module fixture).
"""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flow_runs import run_flow

# Before metaflow: Runner parses the config in this process (steps.config pulls in torch and transformers), and
# importing those after metaflow's vendored typing_extensions fails under pytest (Netflix/metaflow#2462).
import steps.config  # noqa: F401,E402

ROOT = Path(__file__).resolve().parent.parent
FLOW = str(ROOT / "flows" / "growth_flow.py")
TINY = ROOT / "config" / "tiny.toml"


# Commands start in their datastore folder: Metaflow 2.19.39 writes local cards under the first `.metaflow` found
# from the working directory up, and the Client reads them from the datastore root + `mf.cards` (see
# tests/test_growth_flow.py); starting there makes the two the same place.
def _env(datastore: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "METAFLOW_CARD_LOCALROOT"}
    return {**env, "USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(datastore), "HF_HUB_OFFLINE": "1"}


def _cli(args: list[str], datastore: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, FLOW, *args], cwd=str(datastore), env=_env(datastore), capture_output=True,
                          text=True, timeout=timeout)


def _one_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{out.stdout + out.stderr}"
    assert "Traceback" not in lines[0] and "Internal error" not in lines[0]
    return lines[0]


def _no_run_exists(datastore: Path) -> None:
    assert not (datastore / ".metaflow").exists(), f"a run was created: {list((datastore / '.metaflow').rglob('*'))[:5]}"


# ------------------------------------------------------------------------------------------------ no run needed

def test_budget_out_of_range_is_refused_before_any_run_exists(tmp_path):
    out = _cli(["--config", "config", str(TINY), "run", "--budget", "1.5"], tmp_path)
    assert out.returncode == 1
    line = _one_line(out)
    assert line.startswith("GrowthFlow: run parameters (--budget): key 'select.budget' has value 1.5; allowed: ")
    assert line.endswith("no run was started")
    _no_run_exists(tmp_path)


def test_binary_txt_corpus_is_refused_before_any_run_exists(tmp_path):
    binary = tmp_path / "scan.txt"
    binary.write_bytes(bytes(range(256)) * 40)                     # NUL bytes: binary, whatever its name says
    config = tmp_path / "binary.toml"
    config.write_text(TINY.read_text().replace('sources = ["shakespeare", "kjv", "stdlib"]',
                                               f'sources = ["kjv"]\nfiles = [{str(binary)!r}]', 1))
    out = _cli(["--config", "config", str(config), "run"], tmp_path)
    assert out.returncode == 1
    line = _one_line(out)
    assert line.startswith(f"GrowthFlow: {binary}: binary content, not text (40 NUL bytes in 10240 bytes")
    assert "remove it from prepare.files" in line
    _no_run_exists(tmp_path)


def test_resume_without_any_run_says_so(tmp_path):
    out = _cli(["resume", "--origin-run-id", "123"], tmp_path)
    assert out.returncode == 1
    assert "there is no run of GrowthFlow to resume" in _one_line(out)


def test_data_errors_in_a_step_become_one_clean_line():
    from metaflow.exception import MetaflowException

    from flows.cli_checks import DataError, clean_data_errors
    from libs.corpus import CorpusError

    with pytest.raises(DataError, match="x.txt: binary content") as err:
        with clean_data_errors():
            raise CorpusError("x.txt: binary content, not text; remove it from prepare.files")
    assert isinstance(err.value, MetaflowException) and err.value.__cause__ is None
    assert err.value.headline == "Invalid input data"
    with pytest.raises(KeyError):                                  # anything else is a real bug: untouched
        with clean_data_errors():
            raise KeyError("bug")


def test_argv_parsing_finds_the_command_after_top_level_options():
    from flows.cli_checks import _options, _split_command

    top, command, args = _split_command(["f.py", "--quiet", "--config", "config", "c.toml", "--metadata=local",
                                         "--datastore", "local", "resume", "train_large", "--origin-run-id", "7"])
    assert command == "resume" and top["--config"] == ["config", "c.toml"] and top["--datastore"] == ["local"]
    options, positional = _options(args, {"--clone-only"})
    assert options == {"--origin-run-id": "7"} and positional == ["train_large"]
    assert _split_command(["f.py", "step", "start", "--run-id", "3"])[1] == "step"   # tasks pass through


# ------------------------------------------------------------------------------------------------ one shared run

@pytest.fixture(scope="module")
def datastore(tmp_path_factory):
    return tmp_path_factory.mktemp("cli_checks")


@pytest.fixture(scope="module")
def tiny_run(datastore):
    from metaflow import namespace

    namespace(None)                  # the Client in this process needs no user name of its own
    env = {k: v for k, v in _env(datastore).items() if k in ("USER", "METAFLOW_DATASTORE_SYSROOT_LOCAL",
                                                              "HF_HUB_OFFLINE")}
    return run_flow(env, datastore, config=TINY)


def test_wrong_origin_run_id_names_the_id_and_the_runs_that_exist(tiny_run, datastore):
    out = _cli(["resume", "--origin-run-id", "424242"], datastore)
    assert out.returncode == 1
    line = _one_line(out)
    assert line.startswith("GrowthFlow: --origin-run-id 424242: GrowthFlow has no run '424242' in the datastore under")
    assert f"runs that exist, newest first: {tiny_run} (successful)" in line


def test_resuming_a_successful_run_is_refused_unless_a_step_is_named(tiny_run, datastore):
    out = _cli(["resume", "--origin-run-id", tiny_run], datastore)
    assert out.returncode == 1
    line = _one_line(out)
    assert f"run {tiny_run} finished successfully: there is nothing to resume" in line
    assert f"`resume STEP --origin-run-id {tiny_run}`" in line
    out = _cli(["resume"], datastore)                              # the default origin: the latest run
    assert out.returncode == 1 and f"the latest run, {tiny_run}, finished successfully" in _one_line(out)

    from metaflow import get_metadata, get_namespace, metadata, namespace

    from flows.cli_checks import check_command_line
    metadata(f"local@{datastore}")
    namespace("user:someone")
    argv = ["growth_flow.py", "resume", "train_large", "--origin-run-id", tiny_run]
    try:
        assert check_command_line(argv, "GrowthFlow", exit_on_error=False) == argv   # a named step: allowed as is
        # the check read every user's runs, but Metaflow's resume runs next in the same process and passes its
        # namespace to every task: it must find the namespace it had (a global one broke @checkpoint's lookup)
        assert get_namespace() == "user:someone" and get_metadata() == f"local@{datastore}"
    finally:
        namespace(None)


def test_card_get_on_a_two_card_step_writes_the_main_card(tiny_run, datastore, tmp_path):
    from metaflow import Run, metadata, namespace
    from metaflow.cards import get_cards

    metadata(f"local@{datastore}")
    namespace(None)
    task = Run(f"GrowthFlow/{tiny_run}")["pretrain_small"].task
    cards = {card.id: card.get() for card in get_cards(task)}
    assert set(cards) == {None, "live"}
    main, live = tmp_path / "main.html", tmp_path / "live.html"
    out = _cli(["card", "get", f"{tiny_run}/pretrain_small/{task.id}", str(main)], datastore)
    assert out.returncode == 0, out.stdout + out.stderr
    assert main.read_text() == cards[None]
    assert "has 2 cards: writing the main card; `--id live` selects the other" in out.stderr
    out = _cli(["card", "get", f"{tiny_run}/pretrain_small/{task.id}", str(live), "--id", "live"], datastore)
    assert out.returncode == 0 and live.read_text() == cards["live"]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_card_server_listens_on_loopback_unless_told_otherwise(tiny_run, datastore, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "server.log"
    with open(log, "w") as fh:
        server = subprocess.Popen([sys.executable, FLOW, "card", "server", "--port", str(port)], cwd=str(datastore),
                                  env=_env(datastore), stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not _listening_addresses(port):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"card server did not listen within 120 s:\n{log.read_text()}"
            time.sleep(0.5)
        assert _listening_addresses(port) == {"0100007F"}, _listening_addresses(port)   # 127.0.0.1 only
        assert f"card server: listening on http://127.0.0.1:{port}/ (this machine only" in log.read_text()
    finally:
        os.kill(server.pid, 15)
        server.wait(timeout=30)
