"""Run configs: TOML round trip and errors that name the bad section and key."""
from __future__ import annotations

import pytest

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
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_a_checkpoint_from_before_new_keys_resumes_with_their_defaults(tmp_path):
    config = TrainConfig(optim=OptimConfig(lr=0.05))
    stored = config_to_dict(config)
    del stored["optim"]["warmup_steps"], stored["train"]["eval_every"], stored["train"]["keep_best"]
    check_resumable(stored, config, tmp_path / "checkpoint.safetensors")  # the defaults: the same run
    with pytest.raises(ValueError, match=r"\[train\] keep_best: checkpoint True, now False"):
        check_resumable(stored, TrainConfig(optim=OptimConfig(lr=0.05), keep_best=False), tmp_path)
