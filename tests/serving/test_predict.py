"""Export and predict round trips on the real samples (../shared/data): a tiny run is trained on a slice,
exported, and its exported model scores the raw rows; the probabilities must be the trained model's."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from compembed.cli.main import main
from compembed.data.criteo import read_criteo
from compembed.data.errors import InputError
from compembed.data.prepare import CriteoPrepareConfig, prepare_criteo
from compembed.data.table import TableSpec, prepare_table
from compembed.data.vocab import load_id_maps
from compembed.models import ModelConfig
from compembed.serving.export import export_run
from compembed.serving.predict import load_served, predict_file
from compembed.serving.quantize import embedding_bytes, quantize_int8
from compembed.training.config import DataConfig, OptimConfig, TrainConfig
from compembed.training.loop import train
from compembed.training.rundir import load_run

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CRITEO = SHARED / "criteo" / "criteo_kaggle_head8000.tsv.gz"
MOVIELENS = SHARED / "movielens" / "ml100k_ctr.tsv.gz"
pytestmark = pytest.mark.skipif(not CRITEO.exists() or not MOVIELENS.exists(), reason="../shared data not present")
ROWS = 2000  # lines of each sample used
ML_SPEC = dict(label="label", categorical=["user_id", "item_id", "age", "gender", "occupation", "zip_code"],
               dense=["timestamp", "release_year"], multi_hot=["genres"])


def _head(source: Path, target: Path, lines: int) -> list[str]:
    with gzip.open(source, "rt") as f:
        head = [next(f) for _ in range(lines)]
    target.write_text("".join(head))
    return head


def _train(data: Path, run: Path, scheme: str) -> None:
    config = TrainConfig(model=ModelConfig(scheme=scheme, embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,), threshold=20,
                                           hot_rows=10),
                         optim=OptimConfig(lr=0.01), data=DataConfig(source=str(data)), batch_size=128, epochs=1,
                         checkpoint_every=0)
    train(config, out_dir=run, progress=False)


@pytest.fixture(scope="module")
def criteo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("criteo")
    lines = _head(CRITEO, tmp / "rows.tsv", ROWS)
    prepare_criteo([tmp / "rows.tsv"], tmp / "data", CriteoPrepareConfig(split="random", min_freq=2), progress=False)
    _train(tmp / "data", tmp / "run", "qr")
    export_run(tmp / "run", tmp / "model.pt2")
    return {"dir": tmp, "rows": tmp / "rows.tsv", "lines": lines, "model": tmp / "model.pt2", "run": tmp / "run"}


@pytest.fixture(scope="module")
def movielens(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("movielens")
    lines = _head(MOVIELENS, tmp / "rows.tsv", ROWS + 1)  # with the header
    prepare_table([tmp / "rows.tsv"], tmp / "data", TableSpec(**ML_SPEC), progress=False)
    _train(tmp / "data", tmp / "run", "hybrid")
    export_run(tmp / "run", tmp / "model.pt2")
    return {"dir": tmp, "rows": tmp / "rows.tsv", "lines": lines, "model": tmp / "model.pt2", "run": tmp / "run"}


def _trained_probabilities(run_dir: Path) -> np.ndarray:
    """The trained model's probabilities on every prepared row, in file order."""
    run = load_run(run_dir)
    batch = run.dataset.take(slice(0, len(run.dataset.labels)))
    with torch.no_grad():
        return torch.sigmoid(run.model(batch.dense, batch.features(list(run.dataset.info.categorical_names)))).numpy()


def _predict(model: Path, rows: Path, out: Path, batch_size: int = 512) -> np.ndarray:
    assert predict_file(load_served(model), rows, out, batch_size) > 0
    return np.loadtxt(out, ndmin=1)


def test_exported_program_equals_the_trained_model(criteo: dict) -> None:
    served, run = load_served(criteo["model"]), load_run(criteo["run"])
    names = list(run.dataset.info.categorical_names)
    for batch in run.dataset.loader("test", 97):  # batch sizes the program was not traced with
        with torch.no_grad():
            expected = torch.sigmoid(run.model(batch.dense, batch.features(names)))
        torch.testing.assert_close(served.probabilities(batch.dense, batch.features(names)), expected)
    assert served.preprocess["model"]["checkpoint"] == "best.safetensors"  # as `compembed evaluate` picks


@pytest.mark.parametrize("data", ["criteo", "movielens"])
def test_predict_round_trip_gives_the_trained_models_probabilities(data: str, request: pytest.FixtureRequest,
                                                                   tmp_path: Path) -> None:
    case = request.getfixturevalue(data)
    got = _predict(case["model"], case["rows"], tmp_path / "p.txt", batch_size=300)
    expected = _trained_probabilities(case["run"])
    assert got.shape == (ROWS,)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # another batch size: the same up to float rounding (matmul blocking depends on the batch size)
    np.testing.assert_allclose(_predict(case["model"], case["rows"], tmp_path / "q.txt", batch_size=700), got, rtol=1e-5)


def test_batches_of_one_row_with_bags(movielens: dict, tmp_path: Path) -> None:
    (tmp_path / "rows.tsv").write_text("".join(movielens["lines"][:4]))  # header + 3 rows
    got = _predict(movielens["model"], tmp_path / "rows.tsv", tmp_path / "p.txt", batch_size=1)
    np.testing.assert_allclose(got, _trained_probabilities(movielens["run"])[:3], rtol=1e-5)


def test_unseen_and_missing_values_get_the_training_ids(criteo: dict, tmp_path: Path) -> None:
    fields = criteo["lines"][0].rstrip("\n").split("\t")
    maps = load_id_maps(criteo["dir"] / "data")
    run = load_run(criteo["run"])
    batch = run.dataset.take(slice(0, 2))
    names = run.dataset.info.categorical_names
    # a feature whose value in row 0 is a kept one, so that an unseen value changes its id
    j = next(j for j in range(1, 26) if j != 4 and int(batch.sparse[0, j]) not in (maps[names[j]].rare_id,
                                                                                  maps[names[j]].missing_id))
    idmap = maps[names[j]]
    unseen = next(f"{v:08x}" for v in range(1 << 20) if idmap.ids([f"{v:08x}"])[0] == idmap.rare_id)
    fields[1 + 13 + j] = unseen.upper()  # never seen (upper case: hashes are normalised as in prepare)
    fields[1 + 13 + 4] = ""  # C5: missing
    fields[1 + 13 + 0] = criteo["lines"][1].split("\t")[14]  # C1: another row's value
    (tmp_path / "rows.tsv").write_text("\t".join(fields) + "\n")
    got = _predict(criteo["model"], tmp_path / "rows.tsv", tmp_path / "p.txt")

    ids = batch.sparse[:1].clone()
    ids[0, j], ids[0, 4], ids[0, 0] = idmap.rare_id, maps["C5"].missing_id, batch.sparse[1, 0]
    with torch.no_grad():
        expected = torch.sigmoid(run.model(batch.dense[:1], ids)).numpy()
        original = torch.sigmoid(run.model(batch.dense[:1], batch.sparse[:1])).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.allclose(got, original, rtol=1e-6)  # the changed values count


def test_malformed_criteo_rows_get_preparations_errors(criteo: dict, tmp_path: Path) -> None:
    lines = list(criteo["lines"][:3])
    lines[1] = lines[1].replace("\t", "\tx", 1)  # line 2: label 0/1 followed by a bad dense value in I1
    bad = tmp_path / "bad.tsv"
    bad.write_text("".join(lines))
    with pytest.raises(InputError) as prepare_error:
        list(read_criteo([bad]))  # what `prepare` raises
    with pytest.raises(InputError) as predict_error:
        _predict(criteo["model"], bad, tmp_path / "p.txt")
    assert str(predict_error.value) == str(prepare_error.value)
    assert f"{bad}:2: column 2 (I1)" in str(predict_error.value)
    assert not (tmp_path / "p.txt").exists()  # nothing half-written


def test_malformed_table_rows_get_preparations_errors(movielens: dict, tmp_path: Path) -> None:
    lines = list(movielens["lines"][:4])
    header = lines[0].rstrip("\n").split("\t")
    row = lines[3].rstrip("\n").split("\t")
    row[header.index("timestamp")] = "soon"
    lines[3] = "\t".join(row) + "\n"
    bad = tmp_path / "bad.tsv"
    bad.write_text("".join(lines))
    with pytest.raises(InputError) as prepare_error:
        prepare_table([bad], tmp_path / "prepared", TableSpec(**ML_SPEC), progress=False)
    with pytest.raises(InputError) as predict_error:
        _predict(movielens["model"], bad, tmp_path / "p.txt")
    assert str(predict_error.value) == str(prepare_error.value)
    assert f"{bad}:4: column {header.index('timestamp') + 1}" in str(predict_error.value)


def test_cli_export_int8_and_predict(criteo: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "int8.pt2"
    assert main(["export", str(criteo["run"]), "--out", str(model), "--int8"]) == 0
    assert "int8 row-wise tables" in capsys.readouterr().out
    assert main(["export", str(criteo["run"]), "--out", str(model), "--int8"]) == 2  # exists: refused
    out = tmp_path / "p.txt"
    assert main(["predict", str(model), "--input", str(criteo["rows"]), "--out", str(out), "--no-progress"]) == 0
    int8, fp32 = np.loadtxt(out), _trained_probabilities(criteo["run"])
    assert np.abs(int8 - fp32).max() < 0.01 and not np.array_equal(int8, fp32)
    bad = tmp_path / "bad.tsv"
    bad.write_text(criteo["lines"][0].replace("\t", "", 1))  # 39 fields
    assert main(["predict", str(model), "--input", str(bad), "--no-progress"]) == 3
    message = capsys.readouterr().err
    assert f"{bad}:1" in message and "expected 40 tab-separated fields" in message and "--skip-bad-lines" not in message
    # --device: auto is the CPU here and scores the same; int8 tables refuse any other device
    auto = tmp_path / "auto.txt"
    assert main(["predict", str(model), "--input", str(criteo["rows"]), "--out", str(auto), "--no-progress",
                 "--device", "auto"]) == 0
    assert np.array_equal(np.loadtxt(auto), int8)
    with pytest.raises(ValueError, match="int8 tables run on the CPU only"):
        load_served(model, device="meta")


def test_cli_predict_device_errors(criteo: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = tmp_path / "model.pt2"
    assert main(["export", str(criteo["run"]), "--out", str(model)]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), "--input", str(criteo["rows"]), "--device", "cuda", "--no-progress"]) == 2
    assert "device 'cuda': CUDA is not available" in capsys.readouterr().err


def test_predict_refuses_what_it_cannot_score(tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable exported model"):
        load_served(tmp_path / "model.pt2")
    with pytest.raises(FileNotFoundError):
        load_served(tmp_path / "missing.pt2")


def test_cli_evaluate_int8_reports_int8_bytes(criteo: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(criteo["run"]), "--int8"]) == 0
    out = capsys.readouterr().out
    assert "qr-mult/4 int8" in out
    run = load_run(criteo["run"])
    int8_bytes = embedding_bytes(quantize_int8(run.model).embeddings)
    assert 2 * int8_bytes == embedding_bytes(run.model.embeddings)  # d = 8: (8 + 8) bytes a row instead of 32
    assert f"  {int8_bytes / 2**20:.2f}  " in out
