"""Export a run directory to TorchScript / ONNX; outputs match PyTorch's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from filter_templates.cli import main
from filter_templates.core import rundir
from filter_templates.core.errors import UsageError
from filter_templates.export import export_run, load_run_model
from filter_templates.method.arch import make_arch


def fake_run(run: Path, *, final: bool = True, family: str = "vgg19", width: float = 0.05) -> torch.nn.Module:
    """A run directory as `train` leaves it (config.json + model.pt, or only a checkpoint), with
    random but non-trivial weights, without spending time on training."""
    arch = make_arch(family, "uniform", width, 10)
    torch.manual_seed(0)
    model = arch.build()
    with torch.no_grad():  # non-default BN statistics so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    run.mkdir(parents=True)
    if final:
        rundir.atomic_write_json(run / rundir.CONFIG, {"arch": arch.to_dict(), "dataset": "digits"})
        rundir.atomic_save(model.state_dict(), run / rundir.MODEL)
    else:  # killed before the end: the checkpoint alone has weights and architecture
        rundir.atomic_save({"model": model.state_dict(), "arch": arch.to_dict(), "epoch": 1}, run / rundir.CHECKPOINT)
    return model.eval()


def test_rebuilds_model_from_run_dir(tmp_path):
    ref = fake_run(tmp_path / "a")
    model, arch = load_run_model(tmp_path / "a")
    x = torch.randn(3, 3, 32, 32)
    assert not model.training and arch.family == "vgg19"
    assert torch.equal(model(x), ref(x))
    ref2 = fake_run(tmp_path / "b", final=False)
    assert torch.equal(load_run_model(tmp_path / "b")[0](x), ref2(x))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_matches_pytorch(tmp_path, capsys):
    ref = fake_run(tmp_path / "run")
    assert main(["export", "--run", str(tmp_path / "run"), "--format", "torchscript", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    loaded = torch.jit.load(doc["path"])
    x = torch.randn(5, 3, 32, 32)  # another batch size than the trace's
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref(x))


def test_onnx_matches_pytorch_in_onnxruntime(tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    ref = fake_run(tmp_path / "run")
    out = tmp_path / "elsewhere.onnx"
    assert main(["export", "--run", str(tmp_path / "run"), "--format", "onnx", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 7):  # dynamic batch
        x = torch.randn(n, 3, 32, 32)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "setup, argv_tail, word",
    [
        ("none", ["--format", "onnx"], "no such directory"),
        ("empty", ["--format", "torchscript"], "no architecture record"),
        ("noweights", ["--format", "torchscript"], "no weights"),
        ("ok", ["--format", "tflite"], "invalid choice"),
        ("ok", ["--format", "torchscript", "--out", "/nonexistent/dir/m.pt"], "does not exist"),
        ("mismatch", ["--format", "torchscript"], "do not match"),
    ],
)
def test_bad_run_or_format_is_one_error_line(tmp_path, capsys, setup, argv_tail, word):
    run = tmp_path / "run"
    if setup == "empty":
        run.mkdir()
    elif setup == "noweights":
        run.mkdir()
        rundir.atomic_write_json(run / rundir.CONFIG, {"arch": make_arch("vgg19", "base", 0.05, 10).to_dict()})
    elif setup in ("ok", "mismatch"):
        fake_run(run)
        if setup == "mismatch":
            rundir.atomic_write_json(run / rundir.CONFIG, {"arch": make_arch("vgg19", "base", 0.05, 10).to_dict()})
    assert main(["export", "--run", str(run), *argv_tail]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("filter-templates: error: ") and word in err[0], err


def test_export_never_overwrites_the_runs_own_files(tmp_path, capsys):
    fake_run(tmp_path / "run")
    for name in ("model.pt", "config.json"):
        target = tmp_path / "run" / name
        before = target.read_bytes()
        assert main(["export", "--run", str(tmp_path / "run"), "--format", "torchscript", "--out", str(target)]) == 2
        assert "would overwrite" in capsys.readouterr().err
        assert target.read_bytes() == before


def test_unknown_format_in_library_is_usage_error(tmp_path):
    fake_run(tmp_path / "run")
    with pytest.raises(UsageError, match="onnx, torchscript"):
        export_run(tmp_path / "run", "keras")
