"""The machine profile: written by ``tune``, read by every run on the machine it names, in place of
the rule for each execution setting the command does not give; another machine's, or an edited
key, is ignored with one line; a corrupt file is one error line and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tomllib
import torch
from tiny import TINY_SWEEP

from filter_templates.cli import main, tune_cmd
from filter_templates.core.errors import UsageError
from filter_templates.method.arch import make_arch
from filter_templates.training import autotune
from filter_templates.training import profile as machine_profile
from filter_templates.training import tune as tuning

CPU = torch.device("cpu")
# the other precision and layout than the rule's on every CPU, so a run can only get them from the profile
OTHER = autotune.Execution("fp32" if autotune.rule(CPU)[0] == "bf16" else "bf16", "contiguous", 1, False)


def _train_args(out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        "vgg19",
        "--template",
        "uniform",
        "--width",
        "0.05",
        "--dataset",
        "digits",
        "--limit-train",
        "96",
        "--limit-test",
        "32",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--seed",
        "1",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _write(path: Path, execution: autotune.Execution = OTHER, **key) -> Path:
    entry = machine_profile.Entry({**machine_profile.machine_key(CPU), **key}, execution, {"images_per_s": 1.5})
    return machine_profile.write(path, entry)


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_the_profile_lives_in_the_users_config_directory_and_the_suite_has_its_own(monkeypatch, tmp_path):
    assert "filter-templates" in str(machine_profile.default_path())
    assert not machine_profile.default_path().exists()  # conftest: an empty folder, never the developer's
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert machine_profile.default_path() == tmp_path / "filter-templates" / "profile.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert machine_profile.default_path() == Path.home() / ".config" / "filter-templates" / "profile.toml"
    assert machine_profile.resolve_path("off") is None


def test_write_replaces_this_machines_table_and_keeps_the_others(tmp_path):
    path = tmp_path / "p.toml"
    _write(path, device="Another CPU")
    _write(path)
    _write(path, autotune.Execution("fp32", "channels_last", 2, True))
    entries = machine_profile.read(path)
    assert [e.key["device"] for e in entries] == ["Another CPU", machine_profile.machine_key(CPU)["device"]]
    assert entries[1].execution == autotune.Execution("fp32", "channels_last", 2, True)
    assert entries[1].measured == {"images_per_s": 1.5}
    assert machine_profile.find(CPU, str(path)) == (entries[1].execution, str(path))


@pytest.mark.parametrize(
    "text, word",
    [
        ("[[machine]\n", "not valid TOML"),
        ("precision = 'bf16'\n", "only \\[\\[machine"),
        ("[[machine]]\ndevice = 'x'\n", "'cores'"),
        (
            "[[machine]]\ndevice = 'x'\ncores = 2\ntorch = '2'\nprecision = 'fp16'\nmemory_format = 'contiguous'\n"
            "threads = 1\ncompile = false\n",
            "precision",
        ),
        (
            "[[machine]]\ndevice = 'x'\ncores = 2\ntorch = '2'\nprecision = 'fp32'\nmemory_format = 'contiguous'\n"
            "threads = 0\ncompile = false\n",
            "threads",
        ),
    ],
)
def test_a_corrupt_profile_is_refused_naming_the_file(tmp_path, text, word):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=word) as info:
        machine_profile.find(CPU, str(path))
    assert str(path) in str(info.value) and "--no-profile" in str(info.value)
    with pytest.raises(UsageError):  # tune refuses to overwrite it too
        _write(path)
    assert path.read_text() == text


def test_choose_takes_the_profile_for_what_is_not_given():
    found = (OTHER, "/p.toml")
    full = autotune.choose(CPU, profile=found)
    assert (full.precision, full.memory_format, full.source, full.compile, full.profile) == (
        OTHER.precision,
        OTHER.memory_format,
        "profile",
        False,
        "/p.toml",
    )
    half = autotune.choose(CPU, precision="fp32", compile=True, profile=found)
    assert (half.precision, half.memory_format, half.source, half.compile, half.compile_source) == (
        "fp32",
        "contiguous",
        "given+profile",
        True,
        "given",
    )
    assert autotune.choose(CPU).compile is False and autotune.choose(CPU).profile is None


def test_thread_counts_and_the_compile_payback():
    assert (
        tuning.thread_counts(1) == [1] and tuning.thread_counts(2) == [1, 2] and tuning.thread_counts(16) == [1, 8, 16]
    )
    steps = tuning.PAYBACK_EPOCHS * tuning.PAYBACK_IMAGES / 64  # 7,812.5 steps of 64 images
    assert tuning.compile_pays(30.0, 0.010, 0.010 - 31.0 / steps, 64)
    assert not tuning.compile_pays(30.0, 0.010, 0.010 - 29.0 / steps, 64)
    assert not tuning.compile_pays(0.0, 0.010, 0.011, 64)  # slower once compiled: never


def test_a_matching_profile_decides_the_same_weights_twice_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS")  # the thread rule's count, which a profile replaces
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = _write(machine_profile.default_path())
    assert main(_train_args(tmp_path / "a")) == 0 and main(_train_args(tmp_path / "b")) == 0
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    execution = _summary(tmp_path / "a")["execution"]
    assert (execution["source"], execution["profile"], execution["threads_source"]) == ("profile", str(path), "profile")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (cfg["precision"], cfg["memory_format"], cfg["threads"], cfg["compile"]) == (
        OTHER.precision,
        OTHER.memory_format,
        1,
        False,
    )
    # flags win over it, one by one; --no-profile ignores it
    assert main(_train_args(tmp_path / "c", "--memory-format", "channels_last")) == 0
    c = _summary(tmp_path / "c")
    assert (c["memory_format"], c["precision"], c["execution"]["source"]) == (
        "channels_last",
        OTHER.precision,
        "given+profile",
    )
    assert main(_train_args(tmp_path / "d", "--no-profile")) == 0
    d = _summary(tmp_path / "d")
    assert (d["precision"], d["execution"]["source"], d["execution"]["profile"]) == (
        autotune.rule(CPU)[0],
        "rule",
        None,
    )
    assert capsys.readouterr().err == ""


def test_a_resumed_run_keeps_what_it_used_whatever_the_profile_says_now(tmp_path):
    path = _write(tmp_path / "p.toml")
    run = tmp_path / "run"
    assert main(_train_args(run, "--profile", str(path))) == 0
    path.write_text("corrupt [")  # not read on resume: the checkpoint says how the run executes
    assert main([*_train_args(run), "--resume"]) == 0
    s = _summary(run)
    assert (s["precision"], s["memory_format"], s["execution"]["source"]) == (
        OTHER.precision,
        OTHER.memory_format,
        "checkpoint",
    )


def test_another_machines_profile_is_one_line_and_the_rule(tmp_path, capsys):
    path = _write(tmp_path / "p.toml", cores=machine_profile.machine_key(CPU)["cores"] + 1)  # an edited key
    assert main(_train_args(tmp_path / "a", "--profile", str(path))) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "not this machine" in err[0], err
    s = _summary(tmp_path / "a")
    assert (s["precision"], s["execution"]["source"]) == (autotune.rule(CPU)[0], "rule")


def test_a_corrupt_profile_is_exit_2_with_one_line_and_no_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    bad = machine_profile.default_path()
    bad.parent.mkdir(parents=True)
    bad.write_text("precision = [")
    assert main(_train_args(tmp_path / "a")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("filter-templates: error: profile ") and "TOML" in err[0]
    assert not (tmp_path / "a").exists()
    assert main(_train_args(tmp_path / "a", "--no-profile")) == 0
    assert main(_train_args(tmp_path / "b", "--profile", str(tmp_path / "missing.toml"))) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_is_recorded_and_gives_the_same_weights_twice(tmp_path):
    """``--compile``: inductor builds C++ on the first step (minutes on a loaded 2-core CPU)."""
    assert main(_train_args(tmp_path / "a", "--compile", "--no-profile")) == 0
    assert main(_train_args(tmp_path / "b", "--compile", "--no-profile")) == 0
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    s = _summary(tmp_path / "a")
    assert (s["config"]["compile"], s["execution"]["compile"], s["execution"]["compile_source"]) == (
        True,
        True,
        "given",
    )


def test_compile_without_a_compiler_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(autotune.shutil, "which", lambda name: None)
    assert main(_train_args(tmp_path / "a", "--compile")) == 2
    assert "C++ compiler" in capsys.readouterr().err and not (tmp_path / "a").exists()


TINY_TUNE = ["tune", "--width", "0.05", "--seconds", "0.3", "--rounds", "2", "--no-compile", "--json"]


@pytest.fixture
def idle(monkeypatch):
    """The machine as tune reads it: idle before and during (the tests' own machine may be busy)."""
    monkeypatch.setattr(tune_cmd, "load_average", lambda: 0.0)
    monkeypatch.setattr(tuning, "load_average", lambda: 0.0)
    monkeypatch.setattr(tuning.OthersMeter, "cores", lambda self: 0.0)


def test_tune_times_every_variant_and_writes_a_profile_that_train_then_uses(tmp_path, capsys, idle):
    path = tmp_path / "cfg" / "profile.toml"
    assert main([*TINY_TUNE, "--profile", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["profile"] == str(path)
    eager = [v for v in doc["variants"] if not v["variant"].endswith("compiled")]
    untimed = next((r for r in doc["reasons"] if r.startswith("not timed, --seconds ran out first: ")), "")
    untimed_n = len(untimed.split(": ")[1].split(", ")) if untimed else 0  # a slow step can outlast 0.3 s
    assert len(eager) == len(doc["variants"]) and eager[0]["variant"] == "fp32/channels_last/1"
    assert len(eager) + untimed_n == 2 * 2 * len(tuning.thread_counts(autotune.usable_cores()))
    assert doc["load"] == {"load_before": 0.0, "others_during": 0.0, "cores": autotune.usable_cores(), "busy": False}
    assert all(v["min"] <= v["median"] <= v["max"] for v in eager)
    fastest = max(eager, key=lambda v: v["median"])["variant"]
    entry = machine_profile.read(path)[0]
    assert entry.key == machine_profile.machine_key(CPU)
    assert doc["recommended"] == "/".join(
        map(str, (entry.execution.precision, entry.execution.memory_format, entry.execution.threads))
    )
    check = doc["bf16_check"]
    if fastest.startswith("bf16"):  # bf16 wins only with its check passed, else the fastest fp32 variant
        assert check is not None and check["passed"] == (check["fp32"] - check["bf16"] <= tuning.BF16_TOLERANCE)
        assert entry.execution.precision == ("bf16" if check["passed"] else "fp32")
    else:
        assert check is None and doc["recommended"] == fastest
    assert main(_train_args(tmp_path / "run", "--profile", str(path), "--threads", "1")) == 0
    s = _summary(tmp_path / "run")
    assert (s["precision"], s["memory_format"], s["execution"]["source"]) == (
        entry.execution.precision,
        entry.execution.memory_format,
        "profile",
    )


@pytest.mark.slow
def test_tune_print_writes_nothing_and_a_corrupt_profile_is_refused_before_measuring(tmp_path, capsys, idle):
    path = tmp_path / "profile.toml"
    assert main([*TINY_TUNE, "--profile", str(path), "--print"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] is None and not path.exists()


def test_tune_refuses_a_corrupt_profile_or_an_unwritable_path_before_measuring(tmp_path, capsys, idle):
    bad = tmp_path / "profile.toml"
    bad.write_text("nonsense [")
    assert main([*TINY_TUNE, "--profile", str(bad)]) == 2
    assert main([*TINY_TUNE, "--profile", "/proc/ft-profile.toml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "TOML" in err[0] and "/proc" in err[1] and bad.read_text() == "nonsense ["


def test_tune_refuses_a_busy_machine_before_timing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tune_cmd, "load_average", lambda: 4.0 * autotune.usable_cores())

    def timed(request):
        raise AssertionError("tune timed on a busy machine")

    monkeypatch.setattr(tune_cmd, "tune", timed)
    path = tmp_path / "profile.toml"
    assert main([*TINY_TUNE, "--profile", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "busy" in err[0] and "--force" in err[0] and not path.exists()


def test_tune_writes_no_profile_when_others_used_the_cores_while_it_timed(tmp_path, capsys, idle, monkeypatch):
    monkeypatch.setattr(tuning.OthersMeter, "cores", lambda self: float(autotune.usable_cores()))
    path = tmp_path / "profile.toml"
    assert main([*TINY_TUNE, "--profile", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "busy" in err[-1] and "other processes used" in err[-1] and not path.exists()
    assert main([*TINY_TUNE, "--profile", str(path), "--force"]) == 0  # asked for: written, and says so
    measured = tomllib.loads(path.read_text())["machine"][0]["measured"]
    assert measured["busy"] is True and measured["others_during"] == autotune.usable_cores()
    assert measured["load_before"] == 0.0 and measured["cores"] == autotune.usable_cores()


@pytest.mark.parametrize("compile", [False, True])
def test_tune_keeps_to_its_seconds(idle, compile):
    """Everything within --seconds, to 20%: the eager rounds fill their share, and a compile that
    cannot finish in what is left (a child process that has not even imported torch) is stopped."""
    if compile and not any(map(shutil.which, ("g++", "c++", "clang++"))):
        pytest.skip("compile on a CPU needs a C++ compiler")
    seconds = 4.0
    arch = make_arch("vgg19", "uniform", 0.05)
    request = tuning.TuneRequest(arch, CPU, batch_size=8, seconds=seconds, compile=compile)  # steps of ms
    result = tuning.tune(request)
    # a step is never cut short: the bound is 20%, or one step past the deadline where a loaded
    # machine makes one step longer than that
    step = max(request.batch_size / min(t.rounds) for t in result.timings if t.rounds)
    assert result.seconds <= max(1.2 * seconds, seconds + step + 0.5), result.phases
    assert result.seconds >= 0.8 * seconds, result.phases  # and the time is used, not left over
    if compile:
        assert any(r.startswith("compile: not timed") for r in result.reasons)


def test_a_sweep_refuses_a_corrupt_profile_before_any_run(tmp_path, capsys):
    bad = tmp_path / "p.toml"
    bad.write_text("[[machine]]\n")
    args = [
        "sweep",
        *TINY_SWEEP,
        "--db",
        str(tmp_path / "r.sqlite"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--profile",
        str(bad),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_tune_times_a_compile_that_fits_in_its_child_process(idle):
    if not any(map(shutil.which, ("g++", "c++", "clang++"))):
        pytest.skip("compile on a CPU needs a C++ compiler")
    request = tuning.TuneRequest(make_arch("vgg19", "uniform", 0.05), CPU, batch_size=8, seconds=400.0)
    result = tuning.tune(request)
    compiled = [t for t in result.timings if t.variant.compile]
    assert len(compiled) == 1 and compiled[0].compile_s is not None and compiled[0].rounds, result.reasons
    assert any(r.startswith("compile: ") and "to compile" in r for r in result.reasons)
    assert result.seconds <= 1.2 * request.seconds
