"""Checkpoints carry checksums: a flipped byte or damaged state is refused as "checkpoint corrupt"."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compembed.training import OptimConfig, train
from compembed.training.checkpoint import CheckpointCorruptError, check_state, load_checkpoint, save_checkpoint
from compembed.training.loop import BEST, CHECKPOINT
from compembed.training.rundir import LOOP_SCHEMA, fresh_state

from models.toy import toy_dataset
from training.runs import Interrupt, config, interrupt_at


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def _flip_byte_of(path, name: str, at: int = 5) -> None:
    """Flip one bit of byte ``at`` of tensor ``name``'s data in a safetensors file."""
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    start, _ = json.loads(data[8:8 + header_len])[name]["data_offsets"]
    data[8 + header_len + start + at] ^= 0x10
    path.write_bytes(bytes(data))


def _rewrite(path, state=None, raw_state: str | None = None, checksums: bool = True, **tensor_changes) -> None:
    """Rewrite a checkpoint with another JSON state and tensors, as damage or an older version would leave it."""
    tensors = {**load_file(str(path)), **tensor_changes}
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
    if state is not None or raw_state is not None:
        meta = json.loads(header["compembed"])
        header["compembed"] = raw_state if raw_state is not None else json.dumps(dict(meta, state=state))
    if not checksums:
        header.pop("compembed_sha256", None)
    save_file(tensors, str(path), metadata=header)


def test_a_flipped_byte_in_a_weight_is_refused(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, model, [optimizer], {"loop": {"step": 3}})
    fresh, fresh_optimizer = _model_and_optimizer()
    assert load_checkpoint(path, fresh, [fresh_optimizer]) == {"loop": {"step": 3}}
    assert torch.equal(fresh[0].weight, model[0].weight)

    _flip_byte_of(path, "model.0.weight")
    with pytest.raises(CheckpointCorruptError, match=rf"checkpoint corrupt: {path}: tensor 'model.0.weight' fails its "
                                                     r"checksum \(sha256\)") as err:
        load_checkpoint(path, fresh, [fresh_optimizer])
    assert isinstance(err.value, ValueError) and err.value.path == path


def test_damaged_json_state_is_refused(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, model, [optimizer], {"loop": {"step": 3}})
    raw = path.read_bytes()
    # One byte of the stored state changed ("step": 3 -> 7): valid JSON, but it fails its checksum.
    path.write_bytes(raw.replace(b'\\"step\\": 3', b'\\"step\\": 7'))
    with pytest.raises(CheckpointCorruptError, match="its JSON state fails its checksum"):
        load_checkpoint(path, model, [optimizer])
    # Without checksums (an older checkpoint): JSON that does not parse, or of the wrong shape.
    path.write_bytes(raw)
    _rewrite(path, raw_state='{"format": "compembed-checkpoint-1", "state": {', checksums=False)
    with pytest.raises(CheckpointCorruptError, match="its JSON state is not valid JSON"):
        load_checkpoint(path, model, [optimizer])
    path.write_bytes(raw)
    _rewrite(path, raw_state=json.dumps({"format": "compembed-checkpoint-1", "state": [], "optimizer_plain": {},
                                         "num_optimizers": 1}), checksums=False)
    with pytest.raises(CheckpointCorruptError, match=r"metadata.state is \[\], expected a dict"):
        load_checkpoint(path, model, [optimizer])


def test_damaged_rng_state_is_refused_even_without_checksums(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, model, [optimizer], {})
    _rewrite(path, checksums=False, **{"rng.torch": torch.zeros(3, dtype=torch.uint8)})
    with pytest.raises(CheckpointCorruptError, match="the RNG state 'rng.torch' does not load"):
        load_checkpoint(path, model, [optimizer])
    _rewrite(path, checksums=False, **{"rng.torch": torch.zeros(3)})
    with pytest.raises(CheckpointCorruptError, match="the RNG state 'rng.torch' is missing or malformed"):
        load_checkpoint(path, model, [optimizer])


def test_an_older_checkpoint_without_checksums_still_loads(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, model, [optimizer], {"loop": {"step": 3}})
    _rewrite(path, checksums=False)
    fresh, fresh_optimizer = _model_and_optimizer()
    assert load_checkpoint(path, fresh, [fresh_optimizer]) == {"loop": {"step": 3}}
    assert torch.equal(fresh[1].bias, model[1].bias)


def test_resume_from_damaged_loop_state_says_corrupt(tmp_path):
    dataset, cfg = toy_dataset(), config(max_steps=12)
    with pytest.raises(Interrupt):
        train(cfg, dataset, out_dir=tmp_path, progress=False, on_step=interrupt_at(7))
    path, raw = tmp_path / CHECKPOINT, (tmp_path / CHECKPOINT).read_bytes()
    state = _stored_state(path)
    for damage, message in [
        (dict(state, loop=dict(state["loop"], step="5")), r"loop state.step is '5', expected an int"),
        (dict(state, loop=dict(state["loop"], val={"last": None})), r"loop state.val lacks 'best'"),
        (dict(state, loop=dict(state["loop"], val=dict(state["loop"]["val"], best={"step": 1, "epoch": 0,
                                                                                   "loss": "low", "result": {}}))),
         r"loop state.val.best.loss is 'low', expected a float"),
        (dict(state, config=[1]), r"state.config is \[1\], expected a dict"),
        (dict(state, config={"model": 3}), "its stored config is not a table of sections"),
    ]:
        path.write_bytes(raw)
        _rewrite(path, state=damage, checksums=False)  # as if written so (the checksums would catch a change)
        with pytest.raises(CheckpointCorruptError, match=rf"checkpoint corrupt: {path}: {message}"):
            train(cfg, dataset, out_dir=tmp_path, resume=True, progress=False)
    path.write_bytes(raw)
    _flip_byte_of(path, "rng.torch", at=100)
    with pytest.raises(CheckpointCorruptError, match="tensor 'rng.torch' fails its checksum"):
        train(cfg, dataset, out_dir=tmp_path, resume=True, progress=False)
    path.write_bytes(raw)
    assert train(cfg, dataset, out_dir=tmp_path, resume=True, progress=False).steps == 12


def _stored_state(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["compembed"])["state"]


def test_best_parameters_use_the_same_checks(tmp_path):
    # Best val loss at step 45 of 72 (see test_validation.NOISY); interrupted at 60, resumed with a damaged best file.
    dataset = toy_dataset()
    cfg = config(optim=OptimConfig(name="adagrad", lr=0.3, embedding_lr=0.3), epochs=3, eval_every=3)
    with pytest.raises(Interrupt):
        train(cfg, dataset, out_dir=tmp_path, progress=False, on_step=interrupt_at(60))
    _flip_byte_of(tmp_path / BEST, next(k for k in sorted(load_file(str(tmp_path / BEST))) if k.startswith("model.")))
    with pytest.raises(CheckpointCorruptError, match=rf"checkpoint corrupt: {tmp_path / BEST}: tensor 'model\."):
        train(cfg, dataset, out_dir=tmp_path, resume=True, progress=False)


def test_loop_schema_covers_the_fresh_state():
    assert set(LOOP_SCHEMA) == set(fresh_state())
    check_state(fresh_state(), LOOP_SCHEMA, "x", "loop state")
    with pytest.raises(CheckpointCorruptError, match=r"x: loop state.done is 1, expected a bool"):
        check_state(dict(fresh_state(), done=1), LOOP_SCHEMA, "x", "loop state")
    with pytest.raises(CheckpointCorruptError, match=r"loop state.epoch is True, expected an int"):
        check_state(dict(fresh_state(), epoch=True), LOOP_SCHEMA, "x", "loop state")
    check_state(dict(fresh_state(), loss_sum=3), LOOP_SCHEMA, "x", "loop state")  # an int is a float


def test_a_checkpoint_with_the_old_full_table_name_still_loads(tmp_path):
    # FullEmbeddingBag's table was ``weights.0`` before it became ``weight`` (nn.EmbeddingBag's name).
    from compembed.embedding import EmbeddingCollection, FeatureConfig

    def build():
        torch.manual_seed(0)
        configs = [FeatureConfig("a", 30, 4, "full"), FeatureConfig("h", 300, 4, "hybrid", hot_rows=5, cold_scheme="full")]
        model = EmbeddingCollection(configs)
        optimizer = torch.optim.Adagrad(model.parameters())
        return model, optimizer

    model, optimizer = build()
    model(torch.tensor([[3, 200], [29, 1]])).square().sum().backward()
    optimizer.step()
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, model, [optimizer], {"loop": {"step": 1}})
    tensors = {k.replace(".weight", ".weights.0"): v for k, v in load_file(str(path)).items()}
    assert "model.embeddings.a.weights.0" in tensors and "model.embeddings.h.cold.weights.0" in tensors
    with safe_open(str(path), framework="pt") as f:
        header = {k: v for k, v in f.metadata().items() if k != "compembed_sha256"}  # as an older version wrote it
    save_file(tensors, str(path), metadata=header)
    fresh, fresh_optimizer = build()
    assert load_checkpoint(path, fresh, [fresh_optimizer]) == {"loop": {"step": 1}}
    for (name, mine), theirs in zip(fresh.named_parameters(), model.parameters()):
        assert torch.equal(mine, theirs), name
        assert torch.equal(fresh_optimizer.state[mine]["sum"], optimizer.state[theirs]["sum"]), name
