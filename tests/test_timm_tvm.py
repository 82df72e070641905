"""The timm-family specs (issue 10) compile with the TVM llvm target and agree with the
torch backend within 1e-4 relative (at 64x64, batch 2, randomised batch-norm statistics)."""

import pytest

import resdsl
from tests.conftest import spec

pytest.importorskip("tvm", reason="apache-tvm is an optional extra: pip install -e .[tvm]")
from tests.test_tvm_backend import check_agrees  # noqa: E402

pytestmark = pytest.mark.slow   # a TVM build of an ImageNet-sized network each

TIMM = ["resnet18d", "resnet26d", "resnet50d", "seresnet50", "seresnext50_32x4d",
        "ecaresnet50d", "resnetrs50", "resnet50_gn", "res2net50_26w_4s", "skresnet18",
        "resnest50d"]


@pytest.mark.parametrize("name", TIMM)
def test_llvm_agrees_with_torch(name):
    check_agrees(resdsl.load(spec(name), params={"size": 64}))
