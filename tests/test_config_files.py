"""Every shipped config parses into the typed config; the README documents every key."""
from pathlib import Path

import pytest

from libs.schema import ConfigError, describe
from steps.config import GrowthConfig, config_reference_markdown, load_config, load_config_file
from steps.gap_zoo_config import GapZooConfig, load_gap_zoo_config_file
from steps.gap_zoo_config import config_reference_markdown as gap_zoo_reference_markdown

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "config").glob("*.toml"))
GAP_ZOO_CONFIGS = sorted((ROOT / "config" / "gap_zoo").glob("*.toml"))


def test_the_shipped_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"default", "tiny", "gpu"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_parses(path):
    cfg = load_config_file(path)
    assert isinstance(cfg, GrowthConfig)


def test_missing_and_malformed_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = [\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid TOML"):
        load_config_file(bad)


def test_errors_name_the_nested_key():
    with pytest.raises(ConfigError, match="key 'train_large.train.lr' has value -1.0"):
        load_config({"train_large": {"train": {"lr": -1.0}}}, source="x.toml")
    with pytest.raises(ConfigError, match=r"pretrain_small.models\[1\].family"):
        load_config({"pretrain_small": {"models": [{"name": "a"}, {"name": "b", "family": "bert"}]}}, source="x")
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config({"pretrain_small": {"models": [{"name": "a"}, {"name": "a"}]}}, source="x")


def test_readme_documents_every_key():
    readme = (ROOT / "README.md").read_text()
    assert config_reference_markdown() in readme, "regenerate the table: python -m steps.config"
    for row in describe(GrowthConfig):
        assert f"`{row['key']}`" in readme


def test_the_gap_zoo_configs_exist():
    assert {p.stem for p in GAP_ZOO_CONFIGS} >= {"default", "tiny"}


@pytest.mark.parametrize("path", GAP_ZOO_CONFIGS, ids=lambda p: f"gap_zoo/{p.name}")
def test_every_gap_zoo_config_file_parses(path):
    cfg = load_gap_zoo_config_file(path)
    assert isinstance(cfg, GapZooConfig) and cfg.zoo.n_networks >= cfg.fit.min_networks


def test_the_default_gap_zoo_is_big_enough():
    cfg = load_gap_zoo_config_file(ROOT / "config" / "gap_zoo" / "default.toml")
    assert cfg.zoo.n_networks >= 1000


def test_readme_documents_every_gap_zoo_key():
    readme = (ROOT / "README.md").read_text()
    assert gap_zoo_reference_markdown() in readme, "regenerate the table: python -m steps.gap_zoo_config"
    for row in describe(GapZooConfig):
        assert f"`{row['key']}`" in readme


def test_readme_documents_every_lm_zoo_key():
    from libs.schema import reference_markdown
    from steps.lm_zoo_config import LMZooConfig

    readme = (ROOT / "README.md").read_text()
    assert reference_markdown(LMZooConfig) in readme, "regenerate the table: python -m steps.lm_zoo_config"
