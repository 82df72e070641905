"""resdsl diff: structural differences by layer name, in words, and checkpoint fit.

Golden files (tests/diff/) hold the full output for the two pairs the docs show; the
numbers in them are checked against torchvision (parameter counts, state_dict keys) and
against the papers' names (ResNet-50 has 50 weighted layers, DenseNet-169 has 169).
Regenerate a golden file with `resdsl diff A B > tests/diff/NAME.txt` after checking it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import resdsl
from resdsl.diff import diff

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "diff"
PAIRS = [("resnet50", "resnext50_32x4d"), ("densenet121", "densenet169")]


def _load(name):
    return resdsl.load(ROOT / "specs" / f"{name}.arch")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "resdsl", "diff", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("a,b", PAIRS)
def test_golden(a, b):
    r = _cli(f"specs/{a}.arch", f"specs/{b}.arch")
    assert r.returncode == 1, r.stderr
    assert r.stdout == (GOLDEN / f"{a}_vs_{b}.txt").read_text()


def test_resnet50_vs_resnext50_reads_as_a_person_says_it():
    torchvision = pytest.importorskip("torchvision")
    d = diff(_load("resnet50"), _load("resnext50_32x4d"))
    words = d.words()
    assert words[0] == "every 3x3 conv in layer1-4 (16 layers) became grouped (groups=32)"
    assert words[1].startswith("widths doubled: the output channels of conv1, conv2 of "
                               "every block in layer1-4")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert d.a_stats["params"] == count(torchvision.models.resnet50())
    assert d.b_stats["params"] == count(torchvision.models.resnext50_32x4d())
    assert (d.a_stats["depth"], d.b_stats["depth"]) == (50, 50)
    assert not d.added and not d.removed
    assert d.first == "layer1.0.conv1"
    assert {c.name for c in d.changed if "groups" in c.fields} == {
        f"layer{s}.{i}.conv2" for s, n in zip(range(1, 5), [3, 4, 6, 3]) for i in range(n)}


def test_densenet121_vs_169():
    torchvision = pytest.importorskip("torchvision")
    d = diff(_load("densenet121"), _load("densenet169"))
    words = d.words()
    assert words[:2] == ["features.denseblock3: 8 denselayers added (denselayer25-32), 24 -> 32",
                         "features.denseblock4: 16 denselayers added (denselayer17-32), 16 -> 32"]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert d.b_stats["params"] - d.a_stats["params"] == \
        count(torchvision.models.densenet169()) - count(torchvision.models.densenet121())
    assert (d.a_stats["depth"], d.b_stats["depth"]) == (121, 169)
    assert d.first == "features.denseblock3.denselayer25.cat"
    # the layers only in B are exactly the parameterised modules torchvision adds
    tv = lambda m: {k.rsplit(".", 1)[0] for k in m.state_dict()}  # noqa: E731
    new_modules = tv(torchvision.models.densenet169()) - tv(torchvision.models.densenet121())
    assert new_modules <= set(d.added)


def test_same_spec_and_json():
    r = _cli("specs/resnet18.arch", "specs/resnet18.arch", "--json")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert out["same"] and out["changed"] == [] and out["a"]["params"] == 11689512
    r = _cli("specs/resnet18.arch", "specs/resnet34.arch", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1
    assert "layer3: 4 blocks added (2-5), 2 -> 6" in out["summary"]
    assert {x["name"] for x in out["added"]} >= {"layer3.5.conv2", "layer1.2.bn1"}


@pytest.mark.slow
def test_checkpoint_of_another_spec_names_the_mismatched_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    ckpt = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    r = _cli("specs/resnet34.arch", "--weights", str(ckpt))
    assert r.returncode == 1
    assert r.stdout.startswith(f"no: {ckpt} does not load into resnet34 (strict)")
    keys34 = set(torchvision.models.resnet34().state_dict())
    keys18 = set(torchvision.models.resnet18().state_dict())
    for key in keys34 - keys18:
        if not key.endswith("num_batches_tracked"):
            assert f"missing: {key} " in r.stdout
    r = _cli("specs/resnet18.arch", "--weights", str(ckpt))
    assert r.returncode == 0 and r.stdout.startswith("yes:")
    # A vs B and B's fit in one go
    r = _cli("specs/resnet18.arch", "specs/resnet34.arch", "--weights", str(ckpt))
    assert r.returncode == 1 and "no: " in r.stdout and "in words:" in r.stdout


@pytest.mark.slow
def test_errors_not_tracebacks(tmp_path):
    bad = tmp_path / "bad.arch"
    bad.write_text("model m() { input [3, 8, 8]\n conv(4, k=99) }")
    for args in ([str(bad), "specs/resnet18.arch"], ["specs/resnet18.arch"],
                 ["specs/resnet18.arch", "--weights", str(tmp_path / "none.pt")],
                 ["specs/resnet18.arch", "--weights", str(bad)]):
        r = _cli(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr and "error" in r.stderr
