"""The command line: exit codes, stdout/stderr, --json, --depth."""

import ast
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


# ---- options: -D forms, outputs, --model, -q, exit codes ---------------------------------

def _inspect_json(capsys, *argv):
    assert main(["inspect", "specs/resnet20.arch", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("argv", [["-D", "num_classes=7"], ["-D", "num_classes = 7"],
                                  ["--param", "num_classes=7"], ["-Dnum_classes=7"]])
def test_dash_d_forms(capsys, argv):
    data = _inspect_json(capsys, *argv)
    assert data["output"] == [7]


def test_dash_d_several_and_the_last_wins(capsys):
    data = _inspect_json(capsys, "-D", "num_classes=7", "-D", "size=64", "-D", "num_classes=5")
    assert data["output"] == [5] and data["input"] == [3, 64, 64]


@pytest.mark.parametrize("value", ["novalue", "1x=3", "num_classes=[1,", "num_classes=@"])
def test_malformed_dash_d_is_a_usage_error(capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["inspect", "specs/resnet20.arch", "-D", value])
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_unknown_parameter_is_an_error_naming_it(capsys):
    assert main(["check", "specs/resnet20.arch", "-D", "num_clases=10"]) == 1
    err = capsys.readouterr().err
    assert "num_clases" in err and "num_classes" in err


@pytest.mark.parametrize("output", [None, "-"])
def test_compile_torch_to_stdout(capsys, output):
    argv = ["compile", "specs/resnet20.arch", "--target", "torch"]
    assert main(argv + (["-o", output] if output else [])) == 0
    source = capsys.readouterr().out
    tree = ast.parse(source)
    assert [n.name for n in tree.body if isinstance(n, ast.ClassDef)][-1] == "ResNet"


def test_compile_torch_into_a_directory(tmp_path, capsys):
    out = tmp_path / "models"
    assert main(["compile", "specs/resnet20.arch", "--target", "torch", "-o", f"{out}/"]) == 0
    assert (out / "resnet20.py").is_file()
    assert main(["compile", "specs/resnet20.arch", "--target", "torch", "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err


TWO_MODELS = """
block unit(c) {
    return conv(c, k=3, p=1) -> relu
}
model small() {
    input [3, 8, 8]
    unit(4)
}
model large() {
    input [3, 8, 8]
    unit(16)
}
"""


def test_model_picks_one_of_several(tmp_path, capsys):
    path = tmp_path / "two.arch"
    path.write_text(TWO_MODELS)
    for name, channels in (("small", 4), ("large", 16)):
        assert main(["inspect", str(path), "--model", name, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["output"] == [channels, 8, 8]
    assert main(["inspect", str(path), "--model", "medium"]) == 1
    assert "medium" in capsys.readouterr().err
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert "--model" in err and "small" in err and "large" in err


def test_check_quiet_prints_only_errors(capsys):
    assert main(["check", "-q", "specs/resnet18.arch", "specs/resnet20.arch"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert main(["check", "-q", "specs/resnet18.arch", "tests/errors/cycle.arch"]) == 1
    out, err = capsys.readouterr()
    assert "resnet18" not in out and "cycle" in err


def test_tune_with_zero_trials_is_refused_before_any_work(tmp_path, capsys):
    pytest.importorskip("tvm")
    db = tmp_path / "db"
    assert main(["tune", "specs/resnet20.arch", "--target", "llvm", "--trials", "0",
                 "--db", str(db)]) == 1
    assert "--trials must be at least 1" in capsys.readouterr().err
    assert not db.exists()
