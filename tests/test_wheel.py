"""resdsl as users get it: the built wheel, installed into a fresh environment, used from an
empty folder outside the checkout (models by name, the bundled block library, create_model).

The fresh venv sees this environment's torch/torchvision through a .pth line (installing
torch again would take minutes); resdsl itself must come from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, cwd, env=None, timeout=600):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"),
         str(ROOT)], cwd=base)
    wheel = next((base / "dist").glob("resdsl-*.whl"))
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    py = venv / "bin" / "python"
    site = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=base).strip()
    # this environment's packages (torch, lark, ...) after the venv's own
    Path(site, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        cwd=base)
    work = base / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RESDSL_PATH")}
    return venv, work, env


@pytest.mark.slow
def test_the_wheel_works_outside_the_checkout(installed):
    venv, work, env = installed
    resdsl = str(venv / "bin" / "resdsl")
    py = str(venv / "bin" / "python")
    where = run([py, "-c", "import resdsl; print(resdsl.__file__)"], cwd=work, env=env)
    assert where.startswith(str(venv)), where

    listing = run([resdsl, "models"], cwd=work, env=env)
    for name in ("resnet50", "resnext50_32x4d", "densenet121", "resnet1202"):
        assert f"\n{name} " in listing

    assert "25,557,032 parameters" in run([resdsl, "check", "resnet50"], cwd=work, env=env)

    (work / "mine.arch").write_text(textwrap.dedent("""\
        use "lib/resnet.arch"
        model mine(num_classes = 10) = imagenet_resnet(basic, [1, 1, 1, 1],
                                                       num_classes=num_classes, size=64)
        """))
    assert "ok: mine" in run([resdsl, "check", "mine.arch"], cwd=work, env=env)

    run([resdsl, "compile", "resnet18", "--target", "torch", "-o", "m.py"], cwd=work, env=env)
    assert "class ResNet(nn.Module)" in (work / "m.py").read_text()

    code = ("import resdsl, torch\n"
            "m = resdsl.create_model('resnext50_32x4d', num_classes=10).eval()\n"
            "y = m(torch.randn(2, 3, 64, 64))\n"
            "print(tuple(y.shape), sum(p.numel() for p in m.parameters()))\n")
    out = run([py, "-c", code], cwd=work, env=env)
    # torchvision's resnext50_32x4d with a 10-class fc: 25,028,904 - 2048*990 - 990
    assert out.split() == ["(2,", "10)", str(25_028_904 - 2048 * 990 - 990)]
