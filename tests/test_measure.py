"""Resource measurement (SPEC section 4): fast counts equal real models' counts, the memory
account equals a hand count, latency and the CUDA peak report what they say."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.method import measure as M
from filter_templates.method.arch import make_arch
from filter_templates.method.templates import template_names
from filter_templates.models import family_names

F32, I64 = 4, 8


# --------------------------------------------------------------------------------------------
# Fast, exact parameter and FLOP counts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", family_names())
def test_meta_counts_equal_built_model(family):
    widths = [0.05, 0.3, 0.13, 0.2, 0.09]  # one per template: every template and several widths are covered
    for template, width in zip(template_names(), widths):
        arch = make_arch(family, template, width)
        real = arch.build()
        assert M.arch_params(arch) == M.count_params(real), (family, template, width)
        assert M.arch_flops(arch) == M.count_flops(real), (family, template, width)


def test_base_counts_match_spec():
    assert M.arch_params(make_arch("vgg19")) == 20_040_522
    assert M.arch_params(make_arch("vgg19", classes=100)) == 20_040_522 + 90 * 513
    assert 0.75e9 < M.arch_flops(make_arch("vgg19")) < 0.85e9


def test_flop_table_is_recorded_once_per_structure(monkeypatch):
    calls = []
    record = M._record_flop_table

    def spy(model, shape):
        calls.append(1)
        return record(model, shape)

    monkeypatch.setattr(M, "_record_flop_table", spy)
    monkeypatch.setattr(M, "_FLOP_TABLES", {})
    M._shape.cache_clear()
    a, b = make_arch("vgg19", "uniform", 0.4), make_arch("vgg19", "uniform", 0.9)
    assert M.arch_flops(a) == M.count_flops(a.build())
    assert M.arch_flops(b) == M.count_flops(b.build())
    assert len(calls) == 1  # vgg19's structure does not change with width: the second is shapes only
    M._shape.cache_clear()


class _MatmulHead(nn.Module):
    """An op FlopCounterMode counts that is neither a conv nor a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.w = nn.Parameter(torch.randn(4 * 32 * 32, 10))

    def forward(self, x):
        return torch.flatten(self.conv(x), 1) @ self.w


def test_shape_counting_falls_back_when_it_cannot_reproduce_the_counter(monkeypatch):
    monkeypatch.setattr(M, "_FLOP_TABLES", {})
    model = _MatmulHead()
    want = M.count_flops(model)
    assert want == 2 * 27 * 4 * 32 * 32 + 2 * 4 * 32 * 32 * 10
    assert M._fast_flops(model, "toy") == want  # recorded: the shape count disagreed, so no table
    assert list(M._FLOP_TABLES.values()) == [None]
    assert M._fast_flops(model, "toy") == want  # and later calls run the counter


# --------------------------------------------------------------------------------------------
# The CPU memory account
# --------------------------------------------------------------------------------------------


def test_account_hand_count_conv_bn_relu_linear():
    torch.manual_seed(0)
    n, c = 2, 4
    model = nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(c * 32 * 32, 10),
    )
    acc = M.train_memory_account(model, batch_size=n)
    params = (c * 3 * 9 + c) + (c + c) + (c * 32 * 32 * 10 + 10)  # conv w+b, bn w+b, linear w+b
    assert acc["parameters"] == params * F32
    assert acc["gradients"] == acc["momentum"] == params * F32  # one gradient, one momentum buffer each
    assert acc["buffers"] == 2 * c * F32 + I64  # running mean and var, num_batches_tracked
    assert acc["input"] == n * 3 * 32 * 32 * F32 + n * I64  # images and int64 labels
    act = n * c * 32 * 32 * F32
    saved = (
        0  # conv saves its input (the batch, already counted) and its weight (a parameter)
        + act  # batch norm saves its input, the conv output ...
        + 2 * c * F32  # ... and its per-channel batch mean and inverse std (weight, running stats: counted)
        + act  # in-place ReLU saves its result: the batch norm output's storage
        + 0  # flatten is a view; linear saves it (same storage as the ReLU output) and a view of its weight
        + n * 10 * F32  # cross entropy: log_softmax saves its output
        + F32  # nll_loss saves the labels (counted) and a scalar total weight
    )
    assert acc["saved"] == saved
    assert acc["total"] == 3 * params * F32 + acc["buffers"] + acc["input"] + saved


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)) + x)  # identity shortcut
        return self.fc(torch.flatten(self.pool(out), 1))


def test_account_hand_count_residual_block():
    n, c, h = 2, 4, 8
    acc = M.train_memory_account(_Residual(c), batch_size=n, input_shape=(c, h, h))
    params = 2 * (c * c * 9) + 2 * (2 * c) + (c * 10 + 10)
    assert acc["parameters"] == acc["gradients"] == acc["momentum"] == params * F32
    assert acc["buffers"] == 2 * (2 * c * F32 + I64)
    assert acc["input"] == n * c * h * h * F32 + n * I64
    act = n * c * h * h * F32
    saved = (
        act  # bn1 input (conv1 output); conv1 saved x (the input) and its weight
        + act  # relu result (bn1 output, in place), also what conv2 saves
        + act  # bn2 input (conv2 output)
        + 0  # bn2 output: only the addition reads it, and addition saves nothing -> never kept
        + act  # relu result after the shortcut sum (in place on the sum), also the pool's input
        + 2 * 2 * c * F32  # each batch norm's batch mean and inverse std
        + n * c * F32  # the pooled features the linear layer saves (flatten is a view)
        + n * 10 * F32
        + F32  # log_softmax output, nll_loss total weight
    )
    assert acc["saved"] == saved


def test_account_leaves_model_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 32, 32))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    M.train_memory_account(model, batch_size=3)
    assert not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("family", family_names())
def test_account_on_meta_equals_account_on_real_model(family):
    arch = make_arch(family, "quadratic", 0.05)
    meta = M.train_memory_account(M.meta_model(arch), batch_size=2)
    real = M.train_memory_account(arch.build(), batch_size=2)
    assert meta == real
    assert M.train_memory_bytes(M.meta_model(arch), batch_size=2) == real["total"]


def test_account_grows_with_batch_and_width():
    small = make_arch("mobilenet", "base", 0.25)
    big = make_arch("mobilenet", "base", 0.5)
    m = M.meta_model(small)
    assert M.train_memory_bytes(m, 8) < M.train_memory_bytes(m, 16)
    assert M.train_memory_bytes(m, 8) < M.train_memory_bytes(M.meta_model(big), 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", family_names())
def test_cuda_peak_against_cpu_account(family):
    arch = make_arch(family, "base", 0.5)
    account = M.train_memory_bytes(M.meta_model(arch), 64, device="cpu")
    peak = M.train_memory_bytes(M.meta_model(arch), 64, device="cuda")
    assert M.train_memory_bytes(arch.build(), 64, device="cuda") == pytest.approx(peak, rel=0.05)
    print(f"{family}: cpu account {account:,} B, cuda peak {peak:,} B, ratio {peak / account:.3f}")
    assert 0.3 * account < peak < 3 * account


# --------------------------------------------------------------------------------------------
# Latency, devices, resources
# --------------------------------------------------------------------------------------------


def test_latency_reports_median_spread_device_threads():
    model = make_arch("vgg19", "base", 0.05).build()
    model.train()
    r = M.latency(model, 2, min_run_time=0.01, max_run_time=0.3)
    assert set(r) == {"median_s", "iqr_s", "device", "threads"}
    assert r["median_s"] > 0 and r["iqr_s"] >= 0
    assert r["device"] == "cpu" and r["threads"] == torch.get_num_threads()
    assert model.training  # mode restored
    torch.set_num_threads(2)
    r = M.latency(model, 1, min_run_time=0.005, threads=1)
    assert r["threads"] == 1 and torch.get_num_threads() == 2  # timed at 1 thread, process setting restored
    with pytest.raises(UsageError, match="thread count"):
        M.latency(model, 1, threads=0)
    with pytest.raises(ValueError):
        M.latency(M.meta_model(make_arch("vgg19", "base", 0.05)), 2)


def test_resources_keys():
    arch = make_arch("vgg19", "uniform", 0.05)
    r = M.resources(arch, batch_size=4, min_run_time=0.005)
    assert r["params"] == M.count_params(arch.build())
    assert r["train_memory_bytes"] == M.train_memory_account(M.meta_model(arch), 4)["total"]
    assert r["train_memory_method"] == "cpu-account"
    assert set(r["latency_s"]) == set(r["latency_iqr_s"]) == {"batch4", "batch1"}
    assert r["device"] == "cpu" and r["threads"] == torch.get_num_threads()
    json.dumps(r)
    lean = M.resources(arch, memory=False, latency=False)
    assert "train_memory_bytes" not in lean and "latency_s" not in lean


def test_resolve_device():
    assert M.resolve_device("cpu").type == "cpu"
    assert M.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu0", ""):
        with pytest.raises(UsageError, match="unknown device"):
            M.resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="not available"):
            M.resolve_device("cuda")


# --------------------------------------------------------------------------------------------
# templates --measure
# --------------------------------------------------------------------------------------------


def test_templates_measure_json(capsys):
    code = main(
        [
            "templates",
            "--model",
            "vgg19",
            "--width",
            "0.05",
            "--template",
            "base",
            "--template",
            "uniform",
            "--measure",
            "--latency-rounds",
            "3",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    assert doc["batch_size"] == 64
    for row in doc["templates"]:
        arch = make_arch("vgg19", row["name"], 0.05)
        assert row["params"] == M.arch_params(arch) and row["flops"] == M.arch_flops(arch)
        assert row["train_memory_bytes"] == M.train_memory_bytes(M.meta_model(arch), 64)
        lat = row["latency"]  # eager torch at batch 1 by default, with how it was measured
        assert lat["runtime"] == "torch" and lat["batch"] == 1 and lat["threads"] == torch.get_num_threads()
        assert lat["median_s"] > 0 and lat["spread_s"] >= 0 and lat["rounds"] == 3 and lat["device"] == "cpu"


def test_templates_measure_table(capsys):
    code = main(
        [
            "templates",
            "--model",
            "mobilenet",
            "--width",
            "0.1",
            "--template",
            "base",
            "--measure",
            "--batch-size",
            "4",
            "--latency-batch",
            "2",
            "--latency-rounds",
            "3",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    assert "train MiB" in out and "ms@2" in out and "± ms" in out and "batch 2, " in out and "torch " in out


def test_templates_without_measure_keeps_its_keys(capsys):
    assert main(["templates", "--model", "vgg19", "--template", "base", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"model", "width", "classes", "image_size", "templates"} and doc["image_size"] == 32
    assert set(doc["templates"][0]) == {"name", "filters", "params", "flops"}


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--device", "tpu"], "unknown device"),
        (["--batch-size", "0"], "positive integer"),
    ],
)
def test_templates_measure_bad_input(capsys, argv, needle):
    code = main(["templates", "--model", "vgg19", "--measure", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err
