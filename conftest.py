"""Puts the repository root on sys.path so tests import `libs` and `steps` as the flows do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")          # tests never reach a model hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# Import torch/transformers (through the config) before any test imports metaflow: metaflow's
# vendored typing_extensions otherwise breaks a later torch import in the same process
# (metaflow issue #2462), which the Runner tests hit when they parse the config.
import steps.config  # noqa: E402,F401
