"""Config layering, overrides, validation, and every shipped config loads."""

import pytest

from trainables.config import CONFIG_DIR, Config, ConfigError, load_config


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    cfg = load_config([str(path)])
    assert isinstance(cfg, Config)
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_layering_then_overrides():
    cfg = load_config(["default", "smoke"], ["train.epochs=5", "search.lr_min=3e-4", "model.name=tiny-gpt2"])
    assert cfg.model.name == "tiny-gpt2"  # --set wins over files
    assert cfg.data.source == "synthetic"  # the later file wins over the earlier
    assert cfg.train.epochs == 5
    assert cfg.search.lr_min == 3e-4 and isinstance(cfg.search.lr_min, float)


def test_all_problems_reported_together(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nepochs = "three"\nbogus = 1\n[nope]\nx = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config([str(bad)], ["search.budget=1.5", "search.ranks=[0]"])
    text = str(err.value)
    for expected in ("train.epochs: expected an integer", "unknown key train.bogus", "unknown section [nope]",
                     "search.budget 1.5 is outside (0, 1]", "search.ranks [0]"):
        assert expected in text
    assert len(err.value.problems) == 5


def test_bad_override_and_missing_file():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config([], ["epochs=3"])
    with pytest.raises(ConfigError, match="not found: pass a .toml path or one of bbc, chatterbot, default, sft, sft_smoke, short_trials, simulated, smoke, smollm2"):
        load_config(["no-such-config"])


def test_cluster_manifests_parse_and_run_the_search():
    import yaml

    launcher = yaml.safe_load((CONFIG_DIR / "cluster" / "ray-cluster.yaml").read_text())
    assert launcher["available_node_types"]["head"]["resources"] == {"CPU": 0}
    job = yaml.safe_load((CONFIG_DIR / "cluster" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"]
    for flag in ("search/run.py", "--address auto", "--gpus-per-trial", "--storage", "--tracking-uri", "--study-storage"):
        assert flag in entry
    # Every flag the manifest passes exists in the CLI.
    from search.run import build_parser

    known = {a for action in build_parser()._actions for a in action.option_strings}
    assert {t for t in entry.split() if t.startswith("--")} <= known


def test_string_settings_take_the_text_as_given():
    cfg = load_config(["smoke"], ["train.precision=no", "data.source=/tmp/no-such-file.csv",
                                  "model.name=1234", "train.epochs=2"])
    assert cfg.train.precision == "no" and cfg.model.name == "1234" and cfg.train.epochs == 2
    assert cfg.data.source == "/tmp/no-such-file.csv"
