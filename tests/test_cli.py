"""The command line: exit codes, stdout/stderr, --json, --depth."""

import json
import subprocess
import sys

import pytest

from resdsl.cli import main


def test_check_valid_specs(capsys):
    assert main(["check", "specs/resnet18.arch", "specs/densenet121.arch"]) == 0
    out = capsys.readouterr().out
    assert "specs/resnet18.arch: ok: resnet18" in out and "11,689,512 parameters" in out


def test_check_invalid_spec_exits_1_with_error_on_stderr(capsys):
    assert main(["check", "specs/resnet18.arch", "tests/errors/cycle.arch"]) == 1
    captured = capsys.readouterr()
    assert "tests/errors/cycle.arch:3:9: error:" in captured.err
    assert "resnet18" in captured.out


def test_check_missing_file(capsys):
    assert main(["check", "specs/nope.arch"]) == 1
    assert "specs/nope.arch: no such file" in capsys.readouterr().err


def test_inspect_table_and_totals(capsys):
    assert main(["inspect", "specs/resnet50.arch", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "resnet50  input [3, 224, 224]"
    assert any(line.startswith("layer3") and "[1024, 14, 14]" in line for line in lines)
    assert lines[-1].split()[-2:] == ["25,557,032", "4,089,184,256"]


def test_inspect_json(capsys):
    assert main(["inspect", "specs/resnet20.arch", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == sum(layer["params"] for layer in data["layers"])
    assert data["layers"][-1] == {"name": "fc", "op": "linear", "shape": [10], "params": 650,
                                  "macs": 640, "layers": 1}


def test_inspect_depth_groups(capsys):
    assert main(["inspect", "specs/resnet18.arch", "--json", "--depth", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [layer["name"] for layer in data["layers"]]
    assert "layer1.0" in names and "layer1.0.conv1" not in names
    row = data["layers"][names.index("layer2.0")]
    assert row["op"] == "basic" and row["layers"] == 9


def test_param_override(capsys):
    assert main(["inspect", "specs/resnet18.arch", "--json", "-D", "num_classes=10"]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == [10]


def test_console_script_and_help():
    out = subprocess.run([sys.executable, "-m", "resdsl.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("check", "inspect", "compile"):
        assert command in out


@pytest.mark.parametrize("argv", [["check"], ["inspect"], ["bogus"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
