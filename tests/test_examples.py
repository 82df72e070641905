"""The examples run, and what they compute agrees with known facts about the networks."""

import runpy

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
