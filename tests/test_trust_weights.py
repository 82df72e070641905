"""Weights files are untrusted input: anything that is not float32 and finite is refused
with a ResdslError naming the tensors (float16/bfloat16/float64 converted only when asked),
on every path: the CLI, to_torch(weights=...) and the TVM build."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import resdsl
from resdsl.cli import main
from resdsl.weights import check_weights, load_weights
from tests.conftest import spec


@pytest.fixture(scope="module")
def arch():
    return resdsl.load(spec("resnet20"))


@pytest.fixture(scope="module")
def sd(arch):
    return arch.to_torch(seed=0).state_dict()


def floats(sd):
    return {k: v for k, v in sd.items() if v.is_floating_point()}


def convert(sd, dtype):
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def save(tmp_path, sd, name="w.safetensors"):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return str(path)


def inspect(path, capsys, *extra):
    code = main(["inspect", spec("resnet20"), "--weights", path, *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_float32_file_is_accepted_with_int64_num_batches_tracked(tmp_path, sd, capsys):
    assert any(k.endswith("num_batches_tracked") and v.dtype == torch.int64
               for k, v in sd.items())
    code, _ = inspect(save(tmp_path, sd), capsys)
    assert code == 0


@pytest.mark.parametrize("dtype,name", [(torch.int8, "int8"), (torch.bool, "bool"),
                                        (torch.int32, "int32"), (torch.uint8, "uint8")])
def test_integer_and_bool_weights_are_refused(tmp_path, sd, capsys, dtype, name):
    path = save(tmp_path, convert(sd, dtype))
    code, err = inspect(path, capsys)
    assert code == 1
    assert f"conv1.weight {name}" in err and "must be float32" in err
    assert ", ..." in err                   # a few names, then "..."
    assert err.count("\n") < 8              # not one line per tensor
    # --cast-weights does not turn integers into weights
    code, err = inspect(path, capsys, "--cast-weights")
    assert code == 1 and name in err


def test_int8_weights_do_not_reach_the_tvm_build(sd, arch):
    from resdsl.backends.tvm.artifact import build
    pytest.importorskip("tvm")
    with pytest.raises(resdsl.ResdslError, match="int8"):
        build(arch, "llvm", weights=convert(sd, torch.int8))


@pytest.mark.parametrize("dtype,name", [(torch.float16, "float16"),
                                        (torch.bfloat16, "bfloat16"),
                                        (torch.float64, "float64")])
@pytest.mark.parametrize("fmt", ["w.safetensors", "w.pt"])
def test_other_float_dtypes_are_refused_unless_cast(tmp_path, sd, capsys, dtype, name, fmt):
    low = convert(sd, dtype)
    path = save(tmp_path, low, fmt)
    code, err = inspect(path, capsys)
    assert code == 1
    assert f"conv1.weight {name}" in err and "--cast-weights" in err
    code, err = inspect(path, capsys, "--cast-weights")
    assert code == 0, err
    loaded = load_weights(path, cast=True)
    for k, v in floats(low).items():
        assert loaded[k].dtype == torch.float32
        assert torch.equal(loaded[k], v.float())      # the values themselves, widened


def test_cast_weights_are_shipped_as_float32(tmp_path, sd, capsys):
    path = save(tmp_path, convert(sd, torch.float16))
    out = tmp_path / "m.py"
    assert main(["compile", spec("resnet20"), "--target", "torch", "-o", str(out),
                 "--weights", path]) == 1
    assert not out.exists() and not (tmp_path / "m.safetensors").exists()
    assert main(["compile", spec("resnet20"), "--target", "torch", "-o", str(out),
                 "--weights", path, "--cast-weights"]) == 0
    shipped = load_weights(tmp_path / "m.safetensors")
    assert all(v.dtype == torch.float32 for k, v in shipped.items()
               if not k.endswith("num_batches_tracked"))


def test_cast_weights_flag_is_in_the_help(capsys):
    for cmd in ("inspect", "compile", "tune"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "--cast-weights" in capsys.readouterr().out


@pytest.mark.parametrize("value,word", [(float("nan"), "NaN"), (float("inf"), "Inf"),
                                        (float("-inf"), "Inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, sd, capsys, value, word):
    bad = dict(sd)
    bad["layer2.1.conv2.weight"] = sd["layer2.1.conv2.weight"].clone()
    bad["layer2.1.conv2.weight"][0, 0, 1, 1] = value
    code, err = inspect(save(tmp_path, bad), capsys)
    assert code == 1
    assert f"layer2.1.conv2.weight holds {word}" in err
    assert "conv1.weight" not in err.replace("layer2.1.conv2.weight", "")


def test_float64_beyond_float32_range_is_refused_after_the_cast(tmp_path, sd, capsys):
    bad = convert(sd, torch.float64)
    bad["fc.bias"] = bad["fc.bias"].clone()
    bad["fc.bias"][3] = 1e300                      # becomes inf in float32
    code, err = inspect(save(tmp_path, bad), capsys, "--cast-weights")
    assert code == 1 and "fc.bias holds Inf" in err


def test_python_state_dict_paths_refuse_the_same_way(arch, sd):
    half = convert(sd, torch.float16)
    with pytest.raises(resdsl.ResdslError, match="float16"):
        arch.to_torch(weights=half)
    report = check_weights(arch, half)
    assert not report.ok and "--cast-weights" in report.hint
    report = check_weights(arch, half, cast=True)
    assert report.ok
    model = arch.to_torch(weights=report.weights)
    assert torch.equal(model.state_dict()["fc.weight"], half["fc.weight"].float())
    nan = dict(sd, **{"fc.bias": torch.full_like(sd["fc.bias"], float("nan"))})
    with pytest.raises(resdsl.ResdslError, match="fc.bias holds NaN"):
        arch.to_torch(weights=nan)


def test_numpy_state_dicts_are_checked_too(arch, sd):
    arrays = {k: v.numpy() for k, v in sd.items()}
    assert check_weights(arch, arrays).ok
    arrays["fc.weight"] = arrays["fc.weight"].astype(np.float16)
    report = check_weights(arch, arrays)
    assert [k for k, _ in report.needs_cast] == ["fc.weight"]
    assert check_weights(arch, arrays, cast=True).ok


def test_non_tensor_values_are_refused(arch, sd):
    bad = dict(sd, **{"fc.bias": [0.0] * 10})
    report = check_weights(arch, bad)
    assert not report.ok and "fc.bias" in report.render("w")


# ---- the loader's branches: each kind of file and checkpoint ----------------------------

def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {"state_dict_ema": sd},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},                 # DDP
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},  # both
], ids=["plain", "state_dict", "model", "state_dict_ema", "ddp", "checkpoint_of_ddp"])
def test_torch_files_and_checkpoints_unwrap_to_the_state_dict(tmp_path, sd, wrap):
    assert _same(load_weights(save(tmp_path, wrap(sd), "w.pth")), sd)


def test_a_partial_module_prefix_is_kept(tmp_path, sd):
    """Only a prefix on every key is DDP's; a model may have a layer named `module`."""
    mixed = dict(sd)
    key = next(iter(mixed))
    mixed[f"module.{key}"] = mixed.pop(key)
    assert f"module.{key}" in load_weights(save(tmp_path, mixed, "w.pth"))


def test_safetensors_file_loads(tmp_path, sd):
    assert _same(load_weights(save(tmp_path, sd)), sd)


@pytest.mark.parametrize("name,data,message", [
    ("w.pth", b"not a pickle", "not a readable torch state_dict"),
    ("w.pth", b"", "not a readable torch state_dict"),
    ("w.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}", "not a readable safetensors"),
    ("w.safetensors", b"", "not a readable safetensors"),
])
def test_corrupt_files_are_clear_errors(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(resdsl.ResdslError, match=message):
        load_weights(path)


def test_missing_file_and_directory_are_clear_errors(tmp_path):
    for path in (tmp_path / "absent.pth", tmp_path):
        with pytest.raises(resdsl.ResdslError, match="no such weights file"):
            load_weights(path)


@pytest.mark.parametrize("obj,message", [
    ([1, 2, 3], "does not hold a state_dict"),
    ({"state_dict": {"a": 1}}, "does not hold a state_dict"),
    ({"epoch": 3}, "does not hold a state_dict"),
])
def test_files_without_a_state_dict_are_refused(tmp_path, obj, message):
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    with pytest.raises(resdsl.ResdslError, match=message):
        load_weights(path)


def test_a_pickled_module_is_not_unpickled(tmp_path, arch):
    """weights_only loading: a whole pickled model is refused, not executed."""
    path = tmp_path / "w.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(resdsl.ResdslError, match="not a readable torch state_dict"):
        load_weights(path)


def test_the_cli_reports_a_corrupt_weights_file_with_exit_code_1(tmp_path, capsys):
    path = tmp_path / "w.pth"
    path.write_bytes(b"garbage")
    code, err = inspect(str(path), capsys)
    assert code == 1 and "not a readable torch state_dict" in err
