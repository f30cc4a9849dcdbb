"""Test-wide settings. `libs`, `steps` and `flows` import from the installed package (`pip install -e .`)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # tests never reach a model hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# Import torch/transformers (through the config) before any test imports metaflow: metaflow's
# vendored typing_extensions otherwise breaks a later torch import in the same process
# (metaflow issue #2462), which the Runner tests hit when they parse the config.
import steps.config  # noqa: E402,F401
