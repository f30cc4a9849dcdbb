"""A person's view of a finished run: `card server` opened in a real (headless) browser.

After a ``config/tiny.toml`` run in a temporary datastore, ``python flows/growth_flow.py card
server`` is started on a free port and Debian's Chromium loads it: the viewer must list every
step's cards, and each card, rendered by the browser from its embedded data (the raw HTML
holds no readable text), must show its step's key figure, the same number the run stored as
an artifact. Screenshots of the viewer and of join_large's card are kept under
``artifacts/card_browser/`` (gitignored).

Skipped, loudly, only where Chromium is not installed (``apt-get install -y chromium``).
"""

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.flow_runs import run_flow

# Before metaflow: Runner parses the config in this process (steps.config pulls in torch and transformers), and
# importing those after metaflow's vendored typing_extensions fails under pytest (Netflix/metaflow#2462).
import steps.config  # noqa: F401,E402

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "flows" / "growth_flow.py"
TINY = ROOT / "config" / "tiny.toml"
ARTIFACTS = ROOT / "artifacts" / "card_browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STEPS = ["start", "prepare", "embed", "select_data", "pretrain_small", "join_small", "grow", "train_large",
         "join_large", "predict_gap", "end"]
LIVE_STEPS = {"pretrain_small", "train_large"}           # steps with a live loss card beside the main one
FIGURE_STEPS = {"prepare", "embed", "select_data", "pretrain_small", "join_small", "train_large", "join_large",
                "predict_gap"}

pytestmark = pytest.mark.slow

if not os.path.exists(CHROMIUM):
    pytest.skip("SKIPPED LOUDLY: the card browser test needs Debian's headless Chromium: "
                "`apt-get install -y chromium` (.ci/run installs it)", allow_module_level=True)


def _env(root: Path) -> dict:
    # cards have their own local root (Metaflow does not derive it from the datastore's): the run and
    # the card server both use this one
    return {"USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root), "HF_HUB_OFFLINE": "1",
            "METAFLOW_CARD_LOCALROOT": str(root / ".metaflow" / "mf.cards"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def datastore(tmp_path_factory):
    return tmp_path_factory.mktemp("metaflow")


@pytest.fixture(scope="module")
def finished_run(datastore):
    from metaflow import Run, metadata, namespace

    namespace(None)                  # the Client in this process needs no user name of its own
    run_id = run_flow(_env(datastore), ROOT, config=TINY)
    metadata(f"local@{datastore}")
    return Run(f"GrowthFlow/{run_id}")


SERVER_START_S = 300   # generous: on a loaded 2-core machine the server starts slowly


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def card_server(finished_run, datastore, tmp_path_factory):
    """``card server`` as users start it (newest run), on a free port; stopped by its PID afterwards."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("card_server") / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, str(FLOW), "card", "server", "--port", str(port)],
                                  cwd=str(ROOT), env={**os.environ, **_env(datastore)}, stdout=log,
                                  stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"card server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if _get_json(f"{base}/runinfo").get("status") == "ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"card server did not answer on {base} within {SERVER_START_S} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


@pytest.fixture(scope="module")
def run_info(card_server):
    return _get_json(f"{card_server}/runinfo")


def _chromium(url: str, profile: Path, *args: str) -> str:
    """Load ``url`` in headless Chromium (fetches and timers run to completion); return stdout."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"chromium failed on {url}:\n{out.stderr[-3000:]}"
    return out.stdout


def _visible(dom: str) -> str:
    """The text a person sees: no scripts or styles, tags dropped, whitespace collapsed."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def _images(dom: str) -> int:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return len(re.findall(r"<img\b[^>]*\bsrc=\"data:image/png", body))


def _key_figures(task) -> list[str]:
    """What the main card of ``task`` must show, formatted as the stage's report() formats it."""
    d, step = task.data, task.parent.id
    if step == "start":
        return [f"GrowthFlow run, seed {d.settings['seed']}", "Settings"]
    if step == "prepare":
        return [f"{len(d.train_tokens)} train", f"{len(d.val_tokens)} validation"]
    if step == "embed":
        n, dim = d.embeddings.shape
        return [f"{n} documents x {dim} dimensions"]
    if step == "select_data":
        return [f"Selected {len(d.selection_indices)} of {len(d.train_tokens)}", "Estimate check"]
    if step == "pretrain_small":
        r = d.small_model                                   # a plain dict artifact
        return [f"Small model {r['name']}", f"Final validation loss {r['final_val_loss']:.4f}"]
    if step == "join_small":
        return [f"{len(d.small_models)} small models pretrained"] + \
               [f"{name} {loss:.4f}" for name, loss in d.small_final_val_loss.items()]
    if step == "grow":
        return [f"max |Δlogit| = {d.grow_preservation['max_abs_dlogit']:.3e}"]
    if step == "train_large":
        r = d.large_arm                                     # a plain dict artifact
        return [f"Large model, arm {r['arm']}", f"Final validation loss {r['final_val_loss']:.4f}"]
    if step == "join_large":
        finals = d.large_final_val_loss
        return ["Did growing pay?", "Capacity check"] + [f"{arm}" for arm in finals]
    if step == "predict_gap":
        return ["Generalization gap"] + [arm for arm in d.gap_predictions]   # a number or "extrapolation" each
    if step == "end":
        return ["What this run measured",
                f"Selected {len(d.selection_indices)} of {len(d.train_tokens)} training documents"]
    raise AssertionError(f"no key figure known for step {step}")


def _live_figures(task) -> list[str]:
    """The live loss card's final state: the last evaluation of the step's curve."""
    d = task.data
    result = d.small_model if task.parent.id == "pretrain_small" else d.large_arm
    last = result["curve"][-1]
    return [f"(live): step {last['step']}, validation loss {last['val_loss']:.4f}"]


def test_viewer_lists_every_steps_cards(finished_run, run_info, card_server, tmp_path):
    assert run_info["run_id"] == finished_run.id                    # the server follows the newest run
    listed = {}
    for card in run_info["cards"]:
        listed.setdefault(card["task"], set()).add(card["card_object"]["id"])
    for step in finished_run:
        for task in step:
            want = {None, "live"} if step.id in LIVE_STEPS else {None}
            if step.id == "train_large":            # @checkpoint's own card (metaflow-checkpoint) may be there too
                assert listed.get(task.pathspec) - {"task_checkpoints"} == want, f"{task.pathspec}: cards"
                continue
            assert listed.get(task.pathspec) == want, f"{task.pathspec}: cards {listed.get(task.pathspec)}"
    assert {t.split("/")[2] for t in listed} == set(STEPS)

    dom = _chromium(f"{card_server}/", tmp_path / "profile", "--dump-dom")
    options = re.findall(r"<option value=\"([^\"]+)\"[^>]*>([^<]*)</option>", dom)
    assert sorted(v for v, _ in options) == sorted(c["card"] for c in run_info["cards"])
    assert {label.split("/")[0] for _, label in options} == set(STEPS)
    assert f"GrowthFlow/{finished_run.id}</h1>" in dom                # the header names the run
    assert re.search(r"<iframe id=\"card-frame\" src=\"/card/GrowthFlow/", dom), "no card loaded in the viewer"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "viewer.png"
    _chromium(f"{card_server}/", tmp_path / "profile", "--window-size=1280,2000", f"--screenshot={shot}")
    _assert_not_blank(shot)
    print(f"\nscreenshot of the card viewer: {shot}")


@pytest.mark.parametrize("step", STEPS)
def test_each_card_shows_its_key_figure(step, finished_run, run_info, card_server, tmp_path):
    cards = {(c["task"], c["card_object"]["id"]): c["card"] for c in run_info["cards"]}
    for task in finished_run[step]:
        checks = [(None, _key_figures(task))]
        if step in LIVE_STEPS:
            checks.append(("live", _live_figures(task)))
        for card_id, phrases in checks:
            dom = _chromium(f"{card_server}/card/{cards[(task.pathspec, card_id)]}", tmp_path / "profile",
                            "--dump-dom")
            text = _visible(dom)
            for phrase in phrases:
                assert phrase in text, f"{task.pathspec} card {card_id}: {phrase!r} not shown:\n{text[:2000]}"
            if step in FIGURE_STEPS:
                assert _images(dom) >= 1, f"{task.pathspec} card {card_id}: no figure rendered"
    if step == "join_large":
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "join_large.png"
        url = f"{card_server}/card/{cards[(finished_run[step].task.pathspec, None)]}"
        _chromium(url, tmp_path / "profile", "--window-size=1280,2000", f"--screenshot={shot}")
        _assert_not_blank(shot)
        print(f"\nscreenshot of join_large's card: {shot}")


def _assert_not_blank(path: Path) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))                     # (H, W, channels) floats in [0, 1]
    assert pixels.shape[:2] == (2000, 1280), pixels.shape
    assert pixels[..., :3].std() > 0.02, f"{path} looks blank"


# ------------------------------------------------------------------------------------------------ markup in names
# A run whose model names, config values and corpus file names carry HTML that runs script when a browser
# interprets it. Each payload marks <body> (data-xss) if it ever runs; every card of the run is rendered in
# Chromium and must show the payloads as text and never run them.

MARKUP_MODEL_A = '<img src=x onerror="document.body.dataset.xss=1">'
MARKUP_MODEL_B = '<details open ontoggle="document.body.dataset.xss=2">'
MARKUP_DIR = '<svg onload="document.body.dataset.xss=3">'
MARKUP_FILE = '<img src=y onerror="document.body.dataset.xss=4">.txt'
MARKUP_FIELD = "[x](javascript:document.body.dataset.xss=5)"


@pytest.fixture(scope="module")
def markup_run(tmp_path_factory):
    from metaflow import Run, Runner, metadata, namespace

    root = tmp_path_factory.mktemp("markup")
    corpus = root / MARKUP_DIR / MARKUP_FILE
    corpus.parent.mkdir()
    corpus.write_text("\n\n".join(f"Paragraph {i} of a user file whose name carries markup; it is plain text "
                                  f"and long enough to be kept as a document of its own." for i in range(40)))
    text = TINY.read_text()
    for old, new in (('name = "small_a"', f"name = '{MARKUP_MODEL_A}'"), ('name = "small_b"', f"name = '{MARKUP_MODEL_B}'"),
                     ('sources = ["shakespeare", "kjv", "stdlib"]',
                      f'sources = ["shakespeare", "kjv", "stdlib"]\nfiles = [{str(corpus)!r}]\n'
                      f'text_field = "{MARKUP_FIELD}"')):
        assert old in text, f"config/tiny.toml changed: {old!r} not found"
        text = text.replace(old, new, 1)
    config = root / "markup.toml"
    config.write_text(text)
    datastore = root / "store"
    datastore.mkdir()
    # started in its datastore folder, without METAFLOW_CARD_LOCALROOT: the cards land where this process's
    # Client (get_cards) reads them (see tests/test_growth_flow.py)
    env = {"USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(datastore), "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    namespace(None)
    with Runner(str(FLOW), show_output=False, env=env, cwd=str(datastore),
                config=[("config", str(config))]).run() as running:
        assert running.status == "successful", (running.stdout + running.stderr)[-5000:]
        run_id = running.run.id
    metadata(f"local@{datastore}")
    return Run(f"GrowthFlow/{run_id}")


def test_markup_in_names_and_config_shows_as_text_and_runs_nothing(markup_run, tmp_path):
    from metaflow.cards import get_cards

    from libs.report import WORD_JOINER

    seen, n_cards = set(), 0
    for step in markup_run:
        for task in step:
            cards = list(get_cards(task))
            assert cards, f"{task.pathspec} has no card"
            for card in cards:
                n_cards += 1
                page = tmp_path / f"{task.pathspec.replace('/', '_')}_{card.id or 'main'}.html"
                page.write_text(card.get())
                dom = _chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
                body_tag = re.search(r"<body\b[^>]*>", dom).group(0)
                assert "data-xss" not in body_tag, f"{task.pathspec} card {card.id}: a payload ran: {body_tag}"
                markup = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
                # no element carries a payload's event handler (the viewer's own icons and figures are fine)
                live = re.search(r"<[a-z]+\b[^>]*\son(error|toggle|load)=", markup, re.I)
                assert not live, f"{task.pathspec} card {card.id}: live markup {live.group(0)!r}"
                assert not re.search(r"href=\"javascript:", markup, re.I), f"{task.pathspec} card {card.id}: link"
                text = _visible(dom).replace(WORD_JOINER, "")
                seen.update(p for p in (MARKUP_MODEL_A, MARKUP_MODEL_B, MARKUP_DIR, MARKUP_FIELD) if p in text)
                if card.id == "live" and step.id == "pretrain_small":     # the live card's title names the model
                    assert MARKUP_MODEL_A in text or MARKUP_MODEL_B in text, f"{task.pathspec}: live card lost the name"
    assert n_cards >= len(STEPS) + 2
    # the payloads did reach the cards (as text): the model names, the file's folder and the config value
    assert seen == {MARKUP_MODEL_A, MARKUP_MODEL_B, MARKUP_DIR, MARKUP_FIELD}, seen
