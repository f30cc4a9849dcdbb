"""Command-line checks that run before Metaflow does: a wrong command fails in one line, with no run created.

Each flow file calls :func:`check_command_line` in its ``if __name__ == "__main__":`` block,
before ``GrowthFlow()`` hands ``sys.argv`` to Metaflow:

    sys.argv = check_command_line(sys.argv, "GrowthFlow", config_cls=GrowthConfig,
                                  default_config=DEFAULT, parameters={"seed": "seed", "budget": "select.budget"})

What it checks, per command (any other command, and every task process Metaflow starts, passes
through untouched):

* ``run``: the run parameters (``--budget 1.5``) against the config schema's bounds, and the
  corpus inputs (``prepare.files`` exist, are UTF-8 text without binary content): Metaflow would
  only see these inside ``start``/``prepare``, after the run exists.
* ``resume``: ``--origin-run-id`` names a run of this flow (Metaflow 2.19.39 crashes with an
  ``UnboundLocalError`` otherwise); resuming a run that finished successfully without naming a
  step is refused (Metaflow would silently clone it into a new, identical run); with a step name
  (``resume train_large --origin-run-id 12``) it re-runs from that step as asked.
* ``card get``: on a step with several cards (a main card and ``id="live"``), Metaflow writes
  nothing and exits 0; here the main card is selected (``--hash`` of the card without an id) and
  a note says which ``--id`` picks the other.
* ``card server``: Metaflow 2.19.39 always listens on every interface; here it listens on
  127.0.0.1 unless ``--bind HOST`` says otherwise (``--bind 0.0.0.0`` serves other machines).

A refusal prints one line, ``<Flow>: <what is wrong>; <the fix>``, to stderr and exits with 1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CommandLineError", "DataError", "check_command_line", "clean_data_errors"]

DEFAULT_CARD_HOST = "127.0.0.1"
_TOP_FLAGS = {"--quiet", "--not-quiet", "--pylint", "--no-pylint", "--help"}
_TOP_TWO_VALUES = {"--config", "--config-value"}
_RESUME_FLAGS = {"--clone-only", "--no-clone-only", "--reentrant", "--no-reentrant", "--help"}
_CARD_GET_FLAGS = {"--follow-resumed", "--no-follow-resumed", "--help"}


class CommandLineError(Exception):
    """A command that cannot work as given; the message names the problem and the fix."""


@functools.cache
def _data_error_class():
    """``DataError``: a MetaflowException, so a failing task prints its message as one line (no traceback)."""
    from metaflow.exception import MetaflowException

    class DataError(MetaflowException):
        headline = "Invalid input data"

    return DataError


def __getattr__(name: str):  # DataError is built on first use: importing this module imports no Metaflow
    if name == "DataError":
        return _data_error_class()
    raise AttributeError(name)


class clean_data_errors:
    """``with clean_data_errors(): ...`` in a step: a data or config error ends the task with one clean line.

    Metaflow prints any exception from a step as "Internal error" with a traceback, except its own
    ``MetaflowException``; this re-raises ``libs.corpus.CorpusError`` and ``libs.schema.ConfigError``
    (whose messages name the file, the value and the fix) as one, without the chained traceback.
    """

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        from libs.corpus import CorpusError
        from libs.schema import ConfigError

        if isinstance(exc, (CorpusError, ConfigError)):
            error = _data_error_class()(str(exc))
            error.__suppress_context__ = True
            raise error from None
        return False


# ------------------------------------------------------------------------------------------------ argv parsing

def _split_command(argv: Sequence[str]) -> tuple[dict[str, list[str]], str | None, list[str]]:
    """``(top-level options, command, the command's arguments)`` of a flow command line."""
    top: dict[str, list[str]] = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return top, arg, list(argv[i + 1:])
        name, eq, value = arg.partition("=")
        if eq or name in _TOP_FLAGS:
            top.setdefault(name, []).append(value)
            i += 1
        elif name in _TOP_TWO_VALUES:
            top.setdefault(name, []).extend(argv[i + 1:i + 3])
            i += 3
        else:
            top.setdefault(name, []).append(argv[i + 1] if i + 1 < len(argv) else "")
            i += 2
    return top, None, []


def _options(args: Sequence[str], flags: set[str]) -> tuple[dict[str, str], list[str]]:
    """A subcommand's ``--name value`` options (last one wins) and its positional arguments."""
    options, positional, i = {}, [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if eq or name in flags:
                options[name] = value
                i += 1
            else:
                options[name] = args[i + 1] if i + 1 < len(args) else ""
                i += 2
        else:
            positional.append(arg)
            i += 1
    return options, positional


def _pair(values: list[str], name: str) -> str | None:
    """The value of ``--config NAME VALUE`` / ``--config-value NAME VALUE`` for the config called ``name``."""
    found = None
    for i in range(0, len(values) - 1, 2):
        if values[i] == name:
            found = values[i + 1]
    return found


# ------------------------------------------------------------------------------------------------ run

def _literal(text: str) -> Any:
    """A command-line value as the TOML literal it spells (``1.5`` -> float, ``3`` -> int), else the string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _check_run(top, args, flow_name, config_cls, default_config, parameters) -> None:
    from libs.schema import ConfigError, load_toml, parse, to_dict

    options, _ = _options(args, set())
    overrides = {key: options[f"--{name}"] for name, key in parameters.items() if f"--{name}" in options}
    path = _pair(top.get("--config", []), "config") or default_config
    inline = _pair(top.get("--config-value", []), "config")
    try:
        if inline is not None:
            settings = parse(config_cls, json.loads(inline), source="--config-value config")
        else:
            with open(path, encoding="utf-8") as fh:
                settings = load_toml(config_cls, fh.read(), source=path)
    except (OSError, ValueError):   # a missing or invalid config: Metaflow's config parser reports it in one line
        return
    if overrides:
        data = to_dict(settings)
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            node = data
            for key in parents:
                node = node[key]
            node[leaf] = _literal(value)
        names = ", ".join(f"--{name}" for name, key in parameters.items() if key in overrides)
        try:
            settings = parse(config_cls, data, source=f"run parameters ({names})")
        except ConfigError as exc:
            raise CommandLineError(f"{exc}; no run was started") from None
    prepare_cfg = getattr(settings, "prepare", None)
    if type(prepare_cfg).__name__ == "PrepareConfig":
        from libs.corpus import CorpusError
        from steps.prepare import check_inputs

        try:
            check_inputs(prepare_cfg)
        except CorpusError as exc:
            raise CommandLineError(f"{exc}; no run was started") from None


# ------------------------------------------------------------------------------------------------ Client helpers

@contextlib.contextmanager
def _all_runs(top):
    """The Client over every user's runs, for the checks only.

    Metaflow's own command runs next in this same process, and the runtime hands its
    namespace to every task (``--namespace``): left global here, a resumed task would run
    in namespace '' and metaflow-checkpoint's ``Run(...)`` lookup of its own run fails with
    "Object not in namespace ''". So the namespace is put back afterwards. (``--metadata``,
    when given, is the one Metaflow's command uses too.)
    """
    from metaflow import get_namespace, metadata, namespace

    before = get_namespace()
    if top.get("--metadata"):
        metadata(top["--metadata"][-1])
    namespace(None)
    try:
        yield
    finally:
        namespace(before)


def _runs_line(runs) -> str:
    shown = [f"{r.id} ({'successful' if r.successful else 'finished, failed' if r.finished else 'failed or running'})"
             for r in runs[:8]]
    more = f" and {len(runs) - 8} older" if len(runs) > 8 else ""
    return ", ".join(shown) + more


def _where() -> str:
    from metaflow.metaflow_config import DATASTORE_SYSROOT_LOCAL

    root = os.environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL") or DATASTORE_SYSROOT_LOCAL
    return f"the datastore under {root}" if root else f"the .metaflow folder found from {os.getcwd()}"


# ------------------------------------------------------------------------------------------------ resume

def _check_resume(top, args, flow_name) -> None:
    options, positional = _options(args, _RESUME_FLAGS)
    origin = options.get("--origin-run-id")
    step = positional[0] if positional else None
    with _all_runs(top):                          # every check reads the runs of every user
        _check_origin(flow_name, origin, step)


def _check_origin(flow_name, origin, step) -> None:
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    try:
        runs = list(Flow(flow_name).runs())
    except MetaflowNotFound:
        runs = []
    if not runs:
        raise CommandLineError(f"there is no run of {flow_name} to resume in {_where()}; start one with `run` "
                               "(or set METAFLOW_DATASTORE_SYSROOT_LOCAL to the folder that holds your runs)")
    if origin is None:
        from metaflow.util import get_latest_run_id

        origin = get_latest_run_id(lambda *a, **k: None, flow_name)
        if origin is None:
            return                                  # Metaflow says "Specify --origin-run-id" itself
        named = False
    else:
        named = True
    by_id = {r.id: r for r in runs}
    if origin not in by_id:
        raise CommandLineError(f"--origin-run-id {origin}: {flow_name} has no run {origin!r} in {_where()}; runs "
                               f"that exist, newest first: {_runs_line(runs)}")
    run = by_id[origin]
    if run.successful and step is None:
        which = f"run {origin}" if named else f"the latest run, {origin},"
        raise CommandLineError(f"{which} finished successfully: there is nothing to resume (Metaflow would copy "
                               f"it into a new, identical run); to re-run from a step, name it: `resume STEP "
                               f"--origin-run-id {origin}` (e.g. train_large), or start a new run with `run`")


# ------------------------------------------------------------------------------------------------ card get / server

def _card_get(top, args, flow_name, argv: list[str]) -> list[str]:
    options, positional = _options(args, _CARD_GET_FLAGS)
    if not positional or {"--id", "--hash", "--type"} & set(options):
        return argv
    from metaflow.cards import get_cards
    from metaflow.plugins.cards.card_cli import resolve_task_from_pathspec

    if top.get("--metadata"):
        from metaflow import metadata
        metadata(top["--metadata"][-1])
    try:          # the task Metaflow's `card get` resolves: STEP is the latest run's (in the user's namespace)
        task = resolve_task_from_pathspec(flow_name, positional[0])
        cards = list(get_cards(task))
    except Exception:            # no such run/step/task: Metaflow's own message says so
        return argv
    if len(cards) <= 1:
        return argv
    ids = [c.id for c in cards]
    others = ", ".join(f"`--id {i}`" for i in ids if i is not None)
    main = [c for c in cards if c.id is None]
    if len(main) != 1:
        raise CommandLineError(f"{task.pathspec} has {len(cards)} cards ({', '.join(map(str, ids))}); choose one "
                               f"with {others}")
    n_others = len(cards) - 1
    print(f"{flow_name}: {task.pathspec} has {len(cards)} cards: writing the main card; {others} "
          + ("selects the other" if n_others == 1 else "select the others"), file=sys.stderr)
    at = argv.index("get", len(argv) - len(args) - 1)
    return argv[:at + 1] + ["--hash", main[0].hash] + argv[at + 1:]


def _card_server(args, argv: list[str]) -> list[str]:
    """Strip ``--bind HOST`` and make Metaflow's card server listen there (default: loopback only)."""
    host, out, i = DEFAULT_CARD_HOST, [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name == "--bind":
            host = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if eq else 2
            continue
        out.append(argv[i])
        i += 1
    if not host:
        raise CommandLineError("card server --bind needs a host: 127.0.0.1 (this machine only, the default) or "
                               "0.0.0.0 (every interface: anyone who reaches this machine can read the cards)")
    from metaflow.plugins.cards import card_server

    base = card_server.ThreadingHTTPServer

    class BoundServer(base):
        def __init__(self, address, handler, *more, **kw):
            super().__init__((host, address[1]), handler, *more, **kw)
            print(f"card server: listening on http://{host}:{address[1]}/"
                  + (" (this machine only; --bind 0.0.0.0 serves other machines)" if host == DEFAULT_CARD_HOST
                     else ""), file=sys.stderr, flush=True)

    card_server.ThreadingHTTPServer = BoundServer
    return out


# ------------------------------------------------------------------------------------------------ entry point

def check_command_line(argv: Sequence[str], flow_name: str, *, config_cls: type | None = None,
                       default_config: str | None = None, parameters: Mapping[str, str] | None = None,
                       exit_on_error: bool = True) -> list[str]:
    """Check a flow's command line before Metaflow starts; return the argv to hand to Metaflow.

    Parameters
    ----------
    argv : the command line (``sys.argv``).
    flow_name : the FlowSpec class name (the Client API's flow name).
    config_cls, default_config : the flow's config dataclass and its default file, for ``run``'s
        parameter and input checks (both None: those checks are skipped).
    parameters : run parameter name -> dotted config key it overrides (``{"budget": "select.budget"}``).
    exit_on_error : print a refusal as one line and exit 1 (the flow's case); False raises
        :class:`CommandLineError` instead (tests).

    Returns
    -------
    ``argv`` unchanged, except for ``card get`` on a step with several cards (the main card's
    ``--hash`` added) and ``card server`` (``--bind`` removed).
    """
    argv = list(argv)
    try:
        top, command, args = _split_command(argv)
        if "--help" in args or "--help" in top:
            return argv
        if command == "run" and config_cls is not None and default_config is not None:
            _check_run(top, args, flow_name, config_cls, default_config, dict(parameters or {}))
        elif command == "resume":
            _check_resume(top, args, flow_name)
        elif command == "card" and args[:1] == ["get"]:
            return _card_get(top, args[1:], flow_name, argv)
        elif command == "card" and args[:1] == ["server"]:
            return _card_server(args[1:], argv)
        return argv
    except CommandLineError as exc:
        if not exit_on_error:
            raise
        print(f"{flow_name}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
