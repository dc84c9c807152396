"""Run configs: TOML round trip and errors that name the bad section and key."""
from __future__ import annotations

import numpy as np
import pytest
import tomli_w

from compembed.models import ModelConfig
from compembed.training import DataConfig, OptimConfig, TrainConfig, load_config, save_config
from compembed.training.config import config_to_dict
from compembed.training.rundir import check_resumable


def test_toml_round_trip(tmp_path):
    config = TrainConfig(model=ModelConfig(arch="dcn", scheme="path", path_hidden=(32,), deep_mlp=(64, 32)),
                         optim=OptimConfig(name="amsgrad", lr=1e-3, embedding_lr=0.01, warmup_steps=100),
                         data=DataConfig(rows=1234, cardinality_scale=0.002), epochs=3, eval_splits=("val", "test"),
                         eval_every=500, early_stopping=3, keep_best=False)
    save_config(config, tmp_path / "run.toml")
    assert load_config(tmp_path / "run.toml") == config
    text = (tmp_path / "run.toml").read_text()
    assert "[model]" in text and 'scheme = "path"' in text


@pytest.mark.parametrize("text,match", [
    ("[model]\nschema = 'qr'\n", r"unknown key\(s\) \['schema'\] in \[model\]"),
    ("[modle]\n", r"unknown section\(s\) \['modle'\]"),
    ("[optim]\nname = 'lion'\n", r"\[optim\]: optim config: name must be one of"),
    ("[train]\nbatch_size = 0\n", r"\[train\]: train config: batch_size must be >= 1"),
    ("[train\n", "not valid TOML"),
])
def test_bad_config_names_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_a_checkpoint_from_before_new_keys_resumes_with_their_defaults(tmp_path):
    config = TrainConfig(optim=OptimConfig(lr=0.05))
    stored = config_to_dict(config)
    del stored["optim"]["warmup_steps"], stored["train"]["eval_every"], stored["train"]["keep_best"]
    check_resumable(stored, config, tmp_path / "checkpoint.safetensors")  # the defaults: the same run
    with pytest.raises(ValueError, match=r"\[train\] keep_best: checkpoint True, now False"):
        check_resumable(stored, TrainConfig(optim=OptimConfig(lr=0.05), keep_best=False), tmp_path)


@pytest.mark.parametrize("text,match", [
    ('[model]\nbottom_mlp = "512"\n', r"\[model\]: model config: bottom_mlp must be a list of integers, got '512' \(str\)"),
    ("[model]\nnum_collisions = 4.5\n", r"num_collisions must be an integer, got 4.5 \(float\)"),
    ("[model]\nname = 5\n", r"name must be a string, got 5 \(int\)"),
    ("[model.features.C3]\nhot_rows = 2.5\n", r"features.C3.hot_rows must be an integer, got 2.5"),
    ('[model.features.C3]\nfactors = [2, "3"]\n', r"features.C3.factors must be a list of integers \(or left out\)"),
    ("[model.features]\nC3 = 4\n", r"features must be a table of tables, got \{'C3': 4\}"),
    ('[train]\neval_splits = "val"\n', r"\[train\]: train config: eval_splits must be a list of strings, got 'val'"),
    ('[train]\neval_splits = ["val", "bogus"]\n',
     r"eval_splits: unknown split\(s\) \['bogus'\]; the splits are \['train', 'val', 'test'\]"),
    ("[train]\nbatch_size = 64.5\n", r"batch_size must be an integer, got 64.5 \(float\)"),
    ("[train]\nbatch_size = 64.0\n", r"batch_size must be an integer, got 64.0 \(float\)"),
    ("[train]\nseed = 1.5\n", r"seed must be an integer, got 1.5"),
    ("[train]\nkeep_best = 1\n", r"keep_best must be true or false, got 1 \(int\)"),
    ("[data]\nsource = 123\n", r"\[data\]: data config: source must be a string, got 123 \(int\)"),
    ("[data]\nseed = -1\n", r"data config: seed must be >= 0, got -1"),
    ('[optim]\nlr = "0.1"\n', r"\[optim\]: optim config: lr must be a number, got '0.1' \(str\)"),
    ("[optim]\nembedding_lr = nan\n", r"embedding_lr must be a number \(or left out\), got nan"),
])
def test_config_types_are_checked_naming_the_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(path)


def test_config_values_take_their_normal_form():
    model = ModelConfig(bottom_mlp=[np.int64(32), 16], num_collisions=np.int64(3),
                        features={"C3": {"factors": (2, 3), "hot_rows": np.int64(5)}})
    assert model.bottom_mlp == (32, 16) and type(model.num_collisions) is int
    assert model.features == {"C3": {"factors": [2, 3], "hot_rows": 5}}  # lists, as read from TOML
    assert type(model.features["C3"]["hot_rows"]) is int
    optim = OptimConfig(lr=1)
    assert optim.lr == 1.0 and type(optim.lr) is float
    assert TrainConfig(eval_splits=["test"]).eval_splits == ("test",)
    with pytest.raises(ValueError, match=r"model config: bottom_mlp sizes must be >= 1, got \[16, 0\]"):
        ModelConfig(bottom_mlp=(16, 0))
    with pytest.raises(ValueError, match=r"train config: batch_size must be an integer, got True \(bool\)"):
        TrainConfig(batch_size=True)
    with pytest.raises(ValueError, match=r"train config: model must be a ModelConfig"):
        TrainConfig(model={"arch": "dlrm"})


def test_a_dataset_path_is_stored_absolute_without_synthetic_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(data=DataConfig(source="data/ds", rows=5))
    where = str(tmp_path / "data" / "ds")
    assert config.data.source == where and config_to_dict(config)["data"] == {"source": where}
    save_config(config, tmp_path / "run.toml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_config(tmp_path / "run.toml").data.source == where
    assert DataConfig(source=tmp_path / "ds").source == str(tmp_path / "ds")  # a Path will do
    assert set(config_to_dict(TrainConfig())["data"]) == {"source", "rows", "cardinality_scale", "seed", "id_order"}


def test_a_run_stored_by_an_older_version_with_a_relative_dataset_path_resumes(tmp_path, monkeypatch):
    """Older versions stored --data as typed, with the synthetic settings: such a run resumes from the folder
    it was started in (a relative path means, as then, relative to the current directory)."""
    monkeypatch.chdir(tmp_path)
    stored = config_to_dict(TrainConfig())
    stored["data"] = {"source": "data/ds", "rows": 200000, "cardinality_scale": 0.01, "seed": 0, "id_order": "value"}
    (tmp_path / "config.toml").write_text(tomli_w.dumps(stored))
    config = load_config(tmp_path / "config.toml")
    assert config.data.source == str(tmp_path / "data" / "ds")
    check_resumable(stored, config, tmp_path / "checkpoint.safetensors")
