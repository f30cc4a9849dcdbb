"""Makes the project's own code travel with the flow to remote compute.

Metaflow packages the flow file's folder (``flows/``). The stages and libraries live
beside it in ``steps/`` and ``libs/``, and the configs in ``config/``; this flow
mutator adds them to the code package, so ``--with kubernetes`` / ``--with batch`` /
Argo tasks import them exactly as a local run does. Check with
``python flows/growth_flow.py package list``.
"""

from __future__ import annotations

import os
from pathlib import Path

from metaflow import FlowMutator
from metaflow.packaging_sys import ContentType

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DIRS = {"libs": (".py",), "steps": (".py",), "config": (".toml", ".yaml", ".yml")}


def project_files() -> list[tuple[str, str]]:
    """(path on disk, path in the package) for every file of libs/, steps/ and config/."""
    out = []
    for folder, suffixes in SHIPPED_DIRS.items():
        base = REPO_ROOT / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix in suffixes and "__pycache__" not in path.parts:
                out.append((str(path), os.path.relpath(path, REPO_ROOT)))
    return out


class ship_project_code(FlowMutator):
    """Flow decorator: include libs/, steps/ and config/ in the code package."""

    def add_to_package(self):
        for path, arcname in project_files():
            yield path, arcname, ContentType.CODE_CONTENT
