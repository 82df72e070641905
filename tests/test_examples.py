"""The examples run, and what they compute agrees with known facts about the networks."""

import runpy

import numpy as np
import pytest

import resdsl


def load_example():
    return runpy.run_path("examples/graph_inspection.py", run_name="example")


def test_graph_inspection_facts():
    ex = load_example()
    g = resdsl.load("specs/resnet50.arch").graph
    assert len(ex["skip_connections"](g)) == 16                 # 3 + 4 + 6 + 3 blocks
    path = ex["longest_path"](g)
    assert sum(g.nodes[n]["op"] in ("conv", "linear") for n in path) == 50
    _, rf, stride = ex["receptive_field"](g)
    assert (rf, stride) == (427, 32)        # ResNet-50's published theoretical receptive field
    dense = resdsl.load("specs/densenet121.arch").graph
    path = ex["longest_path"](dense)
    assert sum(dense.nodes[n]["op"] in ("conv", "linear") for n in path) == 121


def test_graph_inspection_runs(capsys):
    load_example()["main"]("specs/resnet20.arch")
    out = capsys.readouterr().out
    assert "skip connections: 9" in out


@pytest.mark.slow
def test_gradient_flow_plain_vs_residual(tmp_path, capsys):
    """He et al.'s claim, measured: without shortcuts the gradient's size changes from the
    first convolution to the last by far more than with them (here, at initialisation with
    batch norm, plain networks' gradients grow toward the input)."""
    out = tmp_path / "gf.png"
    res = runpy.run_path("examples/gradient_flow.py", run_name="example")["main"](
        ["--depths", "56", "--batch", "8", "--size", "16", "-o", str(out)])
    ratio = {kind: norms[0] / norms[-1] for (kind, _), norms in res.items()}
    assert ratio["plain"] > 10 * ratio["residual"]
    assert ratio["plain"] > 10 * ratio["pre-activation"]
    assert all(np.isfinite(n).all() and (n > 0).all() for n in res.values())
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "first/last gradient norm" in capsys.readouterr().out
