"""benchmarks/tvm_backend.py: the smoke setting (--quick) runs end to end and prints and
writes the interleaved table, the FMA peak and the convolution classes."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("tvm", reason="apache-tvm is an optional extra: pip install -e .[tvm]")
pytest.importorskip("onnxruntime", reason="the benchmark compares against ONNX Runtime")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "tvm_backend.py"


def _bench():
    spec = importlib.util.spec_from_file_location("tvm_backend_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_round_robin_interleaves_and_rotates():
    bench = _bench()
    bench.PAUSE = 0
    calls = []
    entries = {n: (lambda n=n: calls.append(n) or len(calls)) for n in "abc"}
    samples = bench.round_robin(entries, rounds=3, repeats=2, warmup=1)
    assert calls[:3] == ["a", "b", "c"]                       # warm-up, discarded
    assert calls[3:] == list("aabbcc" "bbccaa" "ccaabb")       # one turn each, rotated
    assert {n: len(v) for n, v in samples.items()} == {"a": 6, "b": 6, "c": 6}


@pytest.mark.slow
def test_quick_benchmark_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rows = _bench().main(["--quick", "--json", str(out)])
    text = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(rows))
    (row,) = rows
    assert (row["model"], row["batch"]) == ("resnet20", 1)
    assert row["build_s"] > 0 and row["gflop"] > 0
    assert row["peak_gflops"] > 0 and row["sgemm_gflops"] > 0
    for name in ("eager", "ort", "untuned"):
        r = row["runtimes"][name]
        assert r["n"] == 4                                     # 2 rounds x 2 calls
        assert 0 < r["min"] <= r["median"] <= r["max"]
    classes = {c["class"]: c for c in row["classes"]}
    assert set(classes) == {"3x3"}                            # resnet20: 3x3 convolutions
    c = classes["3x3"]
    assert c["layers"] == 19 and c["gflops"] > 0
    assert c["of_peak"] == pytest.approx(c["gflops"] / row["peak_gflops"])
    header = next(line for line in text.splitlines() if line.startswith("model"))
    for column in ("build s", "eager ms", "ORT ms", "TVM untuned ms", "TVM/ORT"):
        assert column in header
    assert "FMA peak" in text and "of peak" in text
    assert any(line.startswith("resnet20") and " 3x3 " in line for line in text.splitlines())
