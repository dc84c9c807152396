"""How every command fails: one line on stderr naming the path and the cause, an exit code that means the
same for every command (2 usage/config, 3 data, 4 I/O, 130 interrupted), tracebacks only with --debug,
and progress kept on I/O errors so that --resume goes on after space is freed."""
from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import compembed
import compembed.data.prepare as prep
import compembed.data.store as store
import compembed.training.rundir as rundir
from compembed.cli import train as train_cli
from compembed.cli.errors import report
from compembed.cli.main import main
from compembed.data import SyntheticConfig, SyntheticCTR, open_dataset
from compembed.data.export import write_criteo_text
from compembed.training.checkpoint import read_checkpoint_state

REPO = Path(__file__).resolve().parents[2]
TINY = ["--rows", "3000", "--scale", "0.0005", "--dim", "8", "--bottom-mlp", "16", "--top-mlp", "16",
        "--batch-size", "64", "--threads", "1", "--no-progress"]


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The error line, the last on stderr and the only one (progress aside: a sweep's bar and header)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert sum("error" in line for line in lines) == 1, err
    return lines[-1]


@pytest.fixture(scope="module")
def criteo_parts(tmp_path_factory) -> list[Path]:
    """Four Criteo-format text files of 5,000 synthetic rows each (few distinct values: small counts)."""
    folder = tmp_path_factory.mktemp("criteo")
    write_criteo_text(SyntheticCTR(SyntheticConfig(num_rows=20_000, cardinality_scale=0.0002, seed=1)),
                      folder / "all.tsv", progress=False)
    lines = (folder / "all.tsv").read_text().splitlines(keepends=True)
    parts = [folder / f"part{i}.tsv" for i in range(4)]
    for i, part in enumerate(parts):
        part.write_text("".join(lines[5000 * i : 5000 * (i + 1)]))
    return parts


@pytest.fixture()
def table(tmp_path: Path) -> Path:
    path = tmp_path / "table.csv"
    path.write_text("label,c,x\n" + "".join(f"{i % 2},v{i % 7},{i}\n" for i in range(200)))
    return path


def _same_dataset(a: Path, b: Path) -> None:
    x, y = open_dataset(a), open_dataset(b)
    for name in ("dense", "sparse", "labels"):
        np.testing.assert_array_equal(np.asarray(getattr(x, name)), np.asarray(getattr(y, name)))
    assert x.info == y.info and (a / "vocab.json").read_text() == (b / "vocab.json").read_text()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"compembed {compembed.__version__}"


def test_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--debug" in out and all(f"\n  {code} " in out for code in (0, 1, 2, 3, 4, 130))


@pytest.mark.parametrize("argv", [
    ["train", "--data", "{nowhere}", "--out", "{tmp}/run"],
    ["train", "--config", "{nowhere}", "--out", "{tmp}/run"],
    ["evaluate", "{nowhere}"],
    ["demo", "--data", "{nowhere}"],
    ["plan", "{nowhere}", "--budget", "1MiB"],
    ["sweep", "--data", "{nowhere}", "--studies", "budget", "--list"],
    ["prepare", "criteo", "{nowhere}", "--out", "{tmp}/ds"],
    ["prepare", "table", "{nowhere}", "--out", "{tmp}/ds", "--label", "label", "--categorical", "c"],
])
def test_a_missing_path_is_an_io_error_in_every_command(tmp_path, capsys, argv):
    nowhere = tmp_path / "nowhere"
    assert main([a.format(nowhere=nowhere, tmp=tmp_path) for a in argv]) == 4
    line = one_error_line(capsys)
    assert str(nowhere) in line and "no such" in line


@pytest.mark.parametrize("argv", [
    ["train", "--out", "{blocker}/run", *TINY, "--max-steps", "2"],
    ["train", "--write-config", "{blocker}/run.toml"],
    ["demo", "--out", "{blocker}/demo", "--rows", "3000", "--scale", "0.0005", "--seeds", "0", "--no-progress"],
    ["plan", "synthetic", "--rows", "3000", "--scale", "0.0005", "--id-order", "frequency", "--budget", "1MiB",
     "--out", "{blocker}/plan.toml"],
    ["sweep", "--preset", "tiny", "--studies", "collisions", "--seeds", "0", "--out", "{blocker}/sweep"],
    ["synth", "--out", "{blocker}/ds", "--rows", "100", "--quiet"],
    ["synth", "--out", "{blocker}/ds.tsv", "--rows", "100", "--quiet", "--format", "criteo"],
    ["prepare", "criteo", "{criteo}", "--out", "{blocker}/ds", "--quiet"],
    ["prepare", "table", "{table}", "--out", "{blocker}/ds", "--label", "label", "--categorical", "c", "--quiet"],
])
def test_an_output_under_a_file_is_an_io_error(tmp_path, capsys, criteo_parts, table, argv):
    # (chmod 0555 would not stop root, who runs the tests: a path under a file fails for everyone)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = [a.format(blocker=blocker, criteo=criteo_parts[0], table=table) for a in argv]
    assert main(argv) == 4
    line = one_error_line(capsys)
    assert str(blocker) in line and "not a directory" in line, line


def test_a_directory_given_as_input_file(tmp_path, capsys):
    for kind in (["criteo"], ["table", "--label", "label", "--categorical", "c"]):
        assert main(["prepare", kind[0], str(tmp_path), "--out", str(tmp_path / "ds"), *kind[1:], "--quiet"]) == 4
        assert one_error_line(capsys) == f"error: {tmp_path}: is a directory, not an input file"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failing_write_names_the_file_and_the_cause(tmp_path, capsys, monkeypatch, code):
    def failing(src, dst):  # the atomic rename of every file written, as the OS reports it
        raise OSError(code, os.strerror(code), str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", failing)
    target = tmp_path / "run.toml"
    assert main(["train", "--write-config", str(target)]) == 4
    cause = os.strerror(code)
    assert one_error_line(capsys) == f"error: {target}: {cause[0].lower()}{cause[1:]}"
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_usage_data_and_unexpected_errors(tmp_path, capsys, monkeypatch):
    assert main(["bench", "--rounds", "0"]) == 2
    assert one_error_line(capsys) == "error: --rounds must be >= 1, got 0"
    assert main(["prepare", "criteo", str(tmp_path), "--out", str(tmp_path / "o"), "--checkpoint-every", "-1"]) == 2
    assert "checkpoint_seconds must be >= 0" in one_error_line(capsys)
    (tmp_path / "ds").mkdir()
    assert main(["train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run")]) == 3  # no meta.json
    assert "not a complete prepared dataset" in one_error_line(capsys)

    def bug(*args, **kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr(train_cli, "config_from_args", bug)
    assert main(["train", "--write-config", str(tmp_path / "x.toml")]) == 1
    line = one_error_line(capsys)
    assert "unexpected RuntimeError: something broke" in line and "--debug" in line


def test_a_model_too_large_for_the_memory_is_refused_before_anything_is_allocated(tmp_path, capsys):
    # 10**11 values per array: 373 GiB a feature, far beyond this machine; torch's allocator would fail
    # deep inside the module ("can't allocate memory"), or the OOM killer end the run
    assert main(["train", *TINY, "--scheme", "robe", "--robe-size", str(10**11), "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: the model needs at least") and "GiB" in line and "available" in line
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 4
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "FileNotFoundError" in err
    assert err.splitlines()[-1].startswith(f"error: {tmp_path / 'nowhere'}: no such dataset directory")


def test_an_interruption_names_the_progress_kept(tmp_path, capsys):
    (tmp_path / "config.toml").write_text("")
    args = argparse.Namespace(out=str(tmp_path), write_config=None, resume_hint=train_cli._train_resume_hint)
    assert report(KeyboardInterrupt(), args) == 130
    assert capsys.readouterr().err == (f"interrupted; the run so far is kept: continue it with "
                                       f"`compembed train --resume --out {tmp_path}`\n")


def test_train_keeps_its_checkpoint_on_a_full_disk_and_resumes(tmp_path, capsys, monkeypatch):
    options = [*TINY, "--checkpoint-every", "10", "--log-every", "10"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", "--out", str(whole), *options]) == 0
    saved, real = [], rundir.save_checkpoint

    def disk_full_at_the_third(path, *args, **kwargs):
        saved.append(path)
        if len(saved) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, *args, **kwargs)

    monkeypatch.setattr(rundir, "save_checkpoint", disk_full_at_the_third)
    capsys.readouterr()
    assert main(["train", "--out", str(cut), *options]) == 4
    assert one_error_line(capsys) == (f"error: {cut / 'checkpoint.safetensors'}: no space left on device; the run "
                                      f"so far is kept: continue it with `compembed train --resume --out {cut}`")
    assert read_checkpoint_state(cut / "checkpoint.safetensors")["loop"]["step"] == 20
    monkeypatch.undo()  # space freed
    assert main(["train", "--resume", "--out", str(cut), "--no-progress"]) == 0
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert a["evals"] == b["evals"] and a["train_loss"] == b["train_loss"]


def test_prepare_keeps_its_progress_on_a_full_disk_in_pass_2(tmp_path, capsys, monkeypatch, criteo_parts):
    inputs = [str(p) for p in criteo_parts[:2]]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["prepare", "criteo", *inputs, "--out", str(whole), "--quiet"]) == 0

    def disk_full(self, chunk):  # a write on an open file: the OS error names no path
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.NpyWriter, "write", disk_full)
    capsys.readouterr()
    assert main(["prepare", "criteo", *inputs, "--out", str(cut), "--quiet"]) == 4
    partial = tmp_path / "cut.partial"
    assert one_error_line(capsys) == (f"error: {partial}: no space left on device; progress is kept in {partial}: "
                                      "run the same command with --resume to go on from it")
    assert (partial / "checkpoint.json").exists() and not cut.exists()
    monkeypatch.undo()  # space freed
    starts, real = [], prep.read_criteo
    monkeypatch.setattr(prep, "read_criteo", lambda *a, **kw: (starts.append(kw["start"]), real(*a, **kw))[1])
    assert main(["prepare", "criteo", *inputs, "--out", str(cut), "--quiet", "--resume"]) == 0
    assert starts[0][0] == 1 and starts[0][1] > 0  # went on from the end of pass 1: the end of the second file
    _same_dataset(whole, cut)
    assert not partial.exists()


def test_prepare_on_a_full_disk_in_a_subprocess_then_resumes_to_the_same_dataset(tmp_path, criteo_parts):
    """A real write failure: RLIMIT_FSIZE (as a full disk, the write fails with EFBIG, 'file too large') stops
    pass 1 in the third file, past the checkpoints of the first two; --resume then completes."""
    inputs = [str(p) for p in criteo_parts]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["prepare", "criteo", *inputs, "--out", str(whole), "--quiet"]) == 0

    def small_files():  # 1.2 MB: two files' 26 x 4-byte hashes per row fit, three do not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_200_000, 1_200_000))

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-m", "compembed", "prepare", "criteo", *inputs, "--out", str(cut),
                           "--quiet", "--checkpoint-every", "0"], env=env, preexec_fn=small_files,
                          capture_output=True, text=True, timeout=300)
    partial = tmp_path / "cut.partial"
    assert proc.returncode == 4 and proc.stderr == (
        f"error: {partial}: file too large; progress is kept in {partial}: run the same command with --resume to "
        "go on from it\n"), proc.stderr
    assert json.loads((partial / "checkpoint.json").read_text())["rows"] == 10_000 and not cut.exists()
    assert main(["prepare", "criteo", *inputs, "--out", str(cut), "--quiet", "--resume"]) == 0
    _same_dataset(whole, cut)


def test_too_many_bad_lines_names_their_file(tmp_path, capsys, criteo_parts):
    bad = tmp_path / "bad.tsv"
    bad.write_text("junk\n" + criteo_parts[0].read_text().split("\n", 1)[1] + "junk\n")
    assert main(["prepare", "criteo", str(criteo_parts[0]), str(bad), "--out", str(tmp_path / "ds"), "--quiet",
                 "--skip-bad-lines", "--max-bad-lines", "1"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: more than 1 bad lines (--max-bad-lines):")
    assert f"{bad}:1: column 2" in err and f"{bad}:5001: column 2" in err  # the report lists the bad lines
    assert "use --skip-bad-lines" not in err and "Traceback" not in err


def test_a_corrupt_checkpoint_is_a_data_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--max-steps", "3", "--out", str(run)]) == 0
    ckpt = run / "best.safetensors"
    raw = bytearray(ckpt.read_bytes())
    raw[-5] ^= 0xFF  # a byte of the last tensor's data
    ckpt.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 3
    line = one_error_line(capsys)
    assert "checkpoint corrupt" in line and str(ckpt) in line
