"""resdsl as an installed library: models by name, create_model with torchvision/timm
conventions and weights, the classifier API, pickling, -D literals, library files.

Oracles: torchvision.models and timm (built offline, random weights), never resdsl itself.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
import torchvision

import resdsl
from resdsl import ResdslError
from resdsl.cli import main

TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "wide_resnet50_2", "densenet121", "densenet169",
               "densenet201"]
TIMM = ["resnet50", "resnext50_32x4d", "wide_resnet50_2", "densenet121"]


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial batch-norm statistics, so a mixed-up layer cannot go unnoticed."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


# ---- models by name --------------------------------------------------------------------

def test_list_models_by_pattern():
    assert resdsl.list_models("resnext50*") == [
        "resnext50", "resnext50_32x4d", "resnext50_32x4d_a", "resnext50_32x4d_b",
        "resnext50_32x4d_c"]
    assert set(TORCHVISION) <= set(resdsl.list_models())


def test_names_work_everywhere_a_path_does(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["check", "densenet121"]) == 0
    assert "7,978,856 parameters" in capsys.readouterr().out
    assert main(["inspect", "resnet18", "--depth", "1", "-D", "num_classes=10"]) == 0
    assert "fc" in capsys.readouterr().out
    assert main(["compile", "resnet18", "--target", "torch", "-o", "out/"]) == 0
    assert (tmp_path / "out" / "resnet18.py").is_file()
    assert resdsl.load("resnext50").num_params() == 25_028_904


def test_a_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet50").write_text("model mine() {\n input [3, 8, 8]\n conv(4, k=1)\n}\n")
    assert resdsl.load("resnet50").name == "mine"


def test_an_unknown_name_suggests_close_ones():
    with pytest.raises(ResdslError, match="resnet50"):
        resdsl.load("resnet5")


def test_models_command_lists_the_zoo(capsys):
    assert main(["models", "resnet5*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50" in out and "25,557,032" in out and "torchvision.models.resnet50" in out
    assert "resnet56" in out and "He et al. 2015" in out


# ---- create_model against torchvision and timm ------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_create_model_loads_torchvision_weights_with_equal_outputs(name):
    ref = randomized(getattr(torchvision.models, name)())
    model = resdsl.create_model(name, weights=ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
    assert model.state_dict().keys() == ref.state_dict().keys()


@pytest.mark.parametrize("name", [n if n == "resnet50" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in TIMM])
def test_timm_state_dicts_load_and_the_classifier_api_agrees(name):
    ref = randomized(timm.create_model(name, pretrained=False))
    model = resdsl.create_model(name, weights=ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
        assert (model.num_features, model.num_classes) == (ref.num_features, ref.num_classes)
        feats, ref_feats = model.forward_features(x), ref.forward_features(x)
        torch.testing.assert_close(feats, ref_feats, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True),
                                   ref.forward_head(ref_feats, pre_logits=True),
                                   rtol=1e-4, atol=1e-5)
        model.reset_classifier(10)
        ref.reset_classifier(10)
        assert type(model.get_classifier()) is type(ref.get_classifier())
        assert model.get_classifier().weight.shape == ref.get_classifier().weight.shape
        model.get_classifier().load_state_dict(ref.get_classifier().state_dict())
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
        model.reset_classifier(0)
        assert model(x).shape == (2, ref.num_features) and model.num_classes == 0


def test_num_classes_and_in_chans():
    model = resdsl.create_model("resnet18", num_classes=7, in_chans=1)
    ref = torchvision.models.resnet18(num_classes=7)
    assert model.conv1.weight.shape == (64, 1, 7, 7) and model.fc.out_features == 7
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in ref.parameters()) - 64 * 2 * 7 * 7


def test_weights_of_another_class_count_load_all_but_the_classifier():
    ref = randomized(torchvision.models.resnet18())
    with pytest.warns(UserWarning, match="everything but the classifier `fc`"):
        model = resdsl.create_model("resnet18", num_classes=10, weights=ref.state_dict())
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.state_dict().items()
               if not k.startswith("fc."))
    assert model.fc.weight.shape == (10, 512)


def test_weights_from_a_file_and_a_checkpoint_dict(tmp_path):
    ref = randomized(torchvision.models.resnet18())
    torch.save({"epoch": 3, "state_dict_ema": ref.state_dict()}, tmp_path / "ckpt.pth")
    model = resdsl.create_model("resnet18", weights=str(tmp_path / "ckpt.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_torchvision_weights_names_resolve_through_torchvision_cache(tmp_path, monkeypatch):
    """No network here: put a locally made file where torchvision's cache keeps it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    ref = randomized(torchvision.models.resnet18())
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref.state_dict(), cache / w.url.rsplit("/", 1)[1])
    model = resdsl.create_model("resnet18", weights="IMAGENET1K_V1").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    cfg = model.pretrained_cfg
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["crop_size"] == [224]
    assert cfg["num_classes"] == 1000
    with pytest.raises(ResdslError, match="no such weights"):
        resdsl.create_model("resnet18", weights="IMAGENET9K_V7")
    with pytest.raises(ResdslError, match="not a torchvision model"):
        resdsl.create_model("resnet20", weights="IMAGENET1K_V1")


def test_class_names_follow_the_family():
    assert type(resdsl.create_model("resnext50_32x4d")).__name__ == "ResNet"
    assert type(resdsl.create_model("densenet121")).__name__ == "DenseNet"
    assert type(resdsl.create_model("preact_resnet164")).__name__ == "PreActResNet"


def test_torch_save_loads_in_a_new_process(tmp_path):
    model = resdsl.create_model("resnet20", seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    torch.save(model, tmp_path / "m.pt")
    torch.save((x, y), tmp_path / "xy.pt")
    code = ("import torch\n"
            f"m = torch.load({str(tmp_path / 'm.pt')!r}, weights_only=False)\n"
            f"x, y = torch.load({str(tmp_path / 'xy.pt')!r})\n"
            "with torch.no_grad():\n"
            "    print(torch.equal(m(x), y), type(m).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.stdout.split() == ["True", "ResNet"], out.stderr


# ---- parameters from outside ----------------------------------------------------------

def test_dash_d_takes_lists_and_block_names(capsys):
    assert main(["check", "specs/lib/resnet.arch", "--model", "imagenet_resnet",
                 "-D", "unit=bottleneck", "-D", "layers=[3, 4, 6, 3]"]) == 0
    assert "25,557,032 parameters" in capsys.readouterr().out
    assert main(["check", "specs/lib/resnet.arch", "--model", "imagenet_resnet",
                 "-D", "unit=bottlenek", "-D", "layers=[3, 4, 6, 3]"]) == 1
    assert "did you mean `bottleneck`" in capsys.readouterr().err


def test_params_from_python_take_block_names():
    arch = resdsl.load("specs/lib/resnet.arch", model="imagenet_resnet",
                       params={"unit": "basic", "layers": [2, 2, 2, 2]})
    assert arch.num_params() == 11_689_512  # torchvision's resnet18


def test_inspect_params_lists_defaults(capsys):
    assert main(["inspect", "specs/lib/resnet.arch", "--params"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["unit  (required)", "layers  (required)", "groups = 1"]
    assert "num_classes = 1000" in out


def test_check_of_a_block_library(capsys):
    assert main(["check", "specs/lib/densenet.arch"]) == 0
    out = capsys.readouterr().out
    assert "model imagenet_densenet: needs growth, blocks" in out
    assert "block dense_layer" in out


def test_check_of_a_file_of_blocks_or_of_several_models(tmp_path, capsys):
    blocks = tmp_path / "blocks.arch"
    blocks.write_text("block b(planes) { return conv(planes, k=3, p=1) }\n")
    assert main(["check", str(blocks)]) == 0
    assert "block b" in capsys.readouterr().out
    two = tmp_path / "two.arch"
    two.write_text("model small() { input [3, 32, 32]  conv(16, k=3) }\n"
                   "model large() { input [3, 64, 64]  conv(16, k=3, s=2) -> relu -> "
                   "conv(8, k=3) }\n")
    assert main(["check", str(two)]) == 0
    out = capsys.readouterr().out
    assert "model small: ok: 2 layers, 432 parameters" in out
    assert "model large: ok: 4 layers, 1,584 parameters" in out
    broken = tmp_path / "broken.arch"
    broken.write_text("model a() { input [3, 8, 8]  conv(4, k=3) }\n"
                      "model b() { input [3, 8, 8]  conv(4, k=30) }\n")
    assert main(["check", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "broken.arch:2:" in err and "^" in err and "hint:" in err
    # from Python, a file of several models still needs the one to load
    with pytest.raises(ResdslError, match="defines 2 models"):
        resdsl.load(two)
    with pytest.raises(ResdslError, match="defines no model"):
        resdsl.load(blocks)


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"resdsl {resdsl.__version__}"


def test_cuda_without_a_gpu_needs_an_arch(capsys):
    import tvm
    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present: its architecture is the default")
    assert main(["compile", "resnet20", "--target", "cuda", "-o", "/tmp/never"]) == 1
    assert "--cuda-arch" in capsys.readouterr().err


def test_help_and_check_do_not_import_torch_or_tvm():
    code = ("import sys, resdsl.cli\n"
            "resdsl.cli.main(['check', '-q', 'resnet50'])\n"
            "print(sorted(m for m in ('torch', 'tvm') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_cli_weights_by_torchvision_name_carry_preprocessing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(),
               tmp_path / "hub" / "checkpoints" / w.url.rsplit("/", 1)[1])
    assert main(["inspect", "resnet18", "--weights", "IMAGENET1K_V1", "--json"]) == 0
    import json
    data = json.loads(capsys.readouterr().out)
    assert data["weights"]["mean"] == [0.485, 0.456, 0.406]
    assert data["weights"]["std"] == [0.229, 0.224, 0.225]
    assert data["weights"]["source"] == "torchvision ResNet18_Weights.IMAGENET1K_V1"
