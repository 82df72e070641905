"""The examples of issue 11 (train_digits, resnext_forms, densenet_reuse) run at a small
setting, write a real PNG, and what they print agrees with facts computed here another way
(torch modules' parameter counts and channels, MACs counted by forward hooks)."""

from __future__ import annotations

import runpy
import subprocess
import sys

import matplotlib
import pytest
import torch

import resdsl
from tests.conftest import ROOT

matplotlib.use("Agg")


def example(name: str) -> dict:
    return runpy.run_path(str(ROOT / "examples" / f"{name}.py"), run_name="example")


def check_png(path, min_w: int = 300, min_h: int = 200) -> None:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < len(data) < 20_000_000
    img = mpimg.imread(path, format="png")
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h
    assert img.std() > 0.01                  # not a blank canvas


# ---- train_digits --------------------------------------------------------------------

def test_train_digits_small_run(tmp_path, capsys):
    """Depth 8, 3 epochs, no augmentation: both networks learn (chance is 10%), the
    residual one to over 90% held-out accuracy (issue 11's bar)."""
    out = tmp_path / "digits.png"
    res = example("train_digits")["main"](
        ["--depth", "8", "--epochs", "3", "--quick", "-o", str(out)])
    check_png(out)
    assert set(res) == {"residual", "plain"}
    assert res["residual"]["test_acc"][-1] > 0.90
    assert res["plain"]["test_acc"][-1] > 0.50
    for hist in res.values():
        assert len(hist["train_loss"]) == 3
        assert hist["train_loss"][-1] < hist["train_loss"][0]
    text = capsys.readouterr().out
    assert "1347 training and 450 held-out" in text
    assert f"residual  depth 8: held-out accuracy {res['residual']['test_acc'][-1]:.4f}" \
        in text


def test_train_digits_is_deterministic_and_the_bundled_resnet():
    ex = example("train_digits")
    data = ex["digits"](0)
    assert [tuple(t.shape) for t in data] == [(1347, 1, 8, 8), (1347,), (450, 1, 8, 8),
                                              (450,)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # as the example runs (for 8x8 images: faster)
    try:
        a = ex["train"]("residual", 8, data, 1, seed=3)
        b = ex["train"]("residual", 8, data, 1, seed=3)
    finally:
        torch.set_num_threads(threads)
    assert a == b
    # the residual network is specs/lib/cifar_resnet.arch's, the plain one differs from
    # it only by the missing shortcuts (same layers and parameters)
    bundled = resdsl.loads('use "lib/cifar_resnet.arch"\n'
                           "model m() = cifar_resnet(3, in_chans=1, size=8)")
    residual, plain = ex["build"]("residual", 20), ex["build"]("plain", 20)
    assert residual.spec_hash() == bundled.spec_hash()
    assert plain.parameters() == residual.parameters()
    assert {d["op"] for _, d in plain.graph.nodes(data=True)} \
        == {d["op"] for _, d in residual.graph.nodes(data=True)} - {"add", "zeropad"}


# ---- resnext_forms -------------------------------------------------------------------

def test_resnext_forms_quick(tmp_path, capsys):
    out = tmp_path / "forms.png"
    res = example("resnext_forms")["main"](["--quick", "-o", str(out)])
    check_png(out, min_w=1000, min_h=400)
    assert set(res["block"]) == {"a", "b"}
    for d, rel in res["block"].values():
        assert d < 1e-5 and rel < 1e-5
    assert len(set(res["params"].values())) == 1       # the forms have the same parameters
    assert "resnext50_32x4d" not in res
    assert "block: form a vs form c: max abs diff" in capsys.readouterr().out


def test_resnext_forms_mapping_matters():
    """The comparison can fail: group slices given to the wrong paths change the output."""
    ex = example("resnext_forms")
    archs = {f: ex["block"](f, groups=4) for f in "ac"}
    mc = archs["c"].to_torch(seed=0).eval()
    ex["randomise_bn"](mc)
    ma = archs["a"].to_torch().eval()
    sd = ex["map_weights"](mc.state_dict(), ma.state_dict().keys(), 4)
    def swap(k: str) -> str:      # paths 0 and 1 exchange their first convolutions only
        if ".conv1." not in k:
            return k
        return k.replace("paths.0.", "paths.X.").replace("paths.1.", "paths.0.") \
            .replace("paths.X.", "paths.1.")
    swapped = {swap(k): v for k, v in sd.items()}
    x = torch.randn(2, *archs["c"].input_shape)
    with torch.no_grad():
        yc = mc(x)
        ma.load_state_dict(sd, strict=True)
        assert (ma(x) - yc).abs().max() < 1e-5
        ma.load_state_dict(swapped, strict=True)
        assert (ma(x) - yc).abs().max() > 1e-2


@pytest.mark.slow
def test_resnext_forms_whole_resnext50(tmp_path):
    out = tmp_path / "forms.png"
    res = example("resnext_forms")["main"](["-o", str(out)])
    for d, rel in res["resnext50_32x4d"].values():
        assert d < 1e-4 and rel < 1e-5


# ---- densenet_reuse ------------------------------------------------------------------

def _torch_macs(model: torch.nn.Module, shape) -> int:
    """Multiply-accumulates of convolutions and linears, counted by forward hooks."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += out.numel() * k * m.in_channels // m.groups
        else:
            total += m.in_features * m.out_features
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def test_densenet_reuse_table_and_widths(tmp_path, capsys):
    out = tmp_path / "dense.png"
    res = example("densenet_reuse")["main"](["--quick", "-o", str(out)])
    check_png(out)
    text = capsys.readouterr().out
    rows = {r["model"]: r for r in res["table"]}
    assert list(rows) == ["densenet_bc_100_12", "resnet56", "resnet110", "preact_resnet164"]
    models = {}
    for name, r in rows.items():
        arch = resdsl.load(name)
        models[name] = model = arch.to_torch(seed=0)
        assert r["params"] == sum(p.numel() for p in model.parameters()), name
        assert r["macs"] == _torch_macs(model, arch.input_shape), name
        assert f"{name:<20} {r['params']:>11,} {r['macs']:>13,}" in text
    # the published claim, in the table: DenseNet-BC has the fewest parameters and the
    # lowest error
    dense = rows["densenet_bc_100_12"]
    assert all(dense["params"] < r["params"] and dense["error"] < r["error"]
               for name, r in rows.items() if name != "densenet_bc_100_12")
    assert 0.7e6 < dense["params"] < 0.9e6                  # Huang et al.: 0.8M
    # concatenation widths: 2k, growing by k = 12, halved by each transition; and each is
    # the torch module's input channels of that dense layer
    widths = res["widths"]
    assert list(widths) == ["dense1", "dense2", "dense3"]
    starts = [24, (24 + 16 * 12) // 2, ((24 + 16 * 12) // 2 + 16 * 12) // 2]
    for (block, layers), start in zip(widths.items(), starts):
        assert [w for _, w in layers] == [start + 12 * i for i in range(16)], block
        for scope, w in layers:
            assert models["densenet_bc_100_12"].get_submodule(f"{scope}.conv1").in_channels \
                == w
    assert "dense2: 16 layers, concatenation width 108 -> 288 (+12 per layer)" in text


def test_densenet_reuse_imagenet_names():
    """Dense blocks found by the IR, whatever their layers are called (torchvision's
    `denselayer{i+1}` inside `features`)."""
    widths = example("densenet_reuse")["dense_layers"](resdsl.load("densenet121").graph)
    assert [len(v) for v in widths.values()] == [6, 12, 24, 16]
    first = widths["features.denseblock1"][0]
    assert first == ("features.denseblock1.denselayer1", 64)
    assert widths["features.denseblock4"][-1][1] == 512 + 15 * 32


def test_densenet_reuse_command_line(tmp_path):
    out = tmp_path / "d.png"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "densenet_reuse.py"),
                           "--models", "densenet_bc_100_12", "resnet56", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    check_png(out)
