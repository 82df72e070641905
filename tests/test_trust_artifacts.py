"""Artifacts are untrusted input: a damaged or edited artifact directory, a bad input
file, concurrent writers of one output and concurrent tunes of one database all end in a
one-line ResdslError with a hint -- never a traceback, a crash or silently wrong outputs."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import resdsl
from resdsl.cli import main
from tests.conftest import ROOT, spec

tvm = pytest.importorskip("tvm", reason="apache-tvm is an optional extra: pip install -e .[tvm]")

from resdsl.backends.tvm.artifact import (  # noqa: E402
    SCHEMA, build, load_artifact, write_artifact)


pytestmark = pytest.mark.slow   # TVM builds: minutes on a small machine


@pytest.fixture(scope="module")
def built():
    return build(resdsl.load(spec("resnet20")), "llvm")


@pytest.fixture(scope="module")
def artifact(built, tmp_path_factory):
    return write_artifact(built, tmp_path_factory.mktemp("art") / "r20")


@pytest.fixture
def art(artifact, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def meta_of(path):
    return json.loads((path / "metadata.json").read_text())


def write_meta(path, meta):
    (path / "metadata.json").write_text(json.dumps(meta))


def run_fails(path, capsys, *extra):
    """`resdsl run` exits 1 with a rendered error (no traceback); returns stderr."""
    assert main(["run", str(path), "--repeats", "1", *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "\nhint: " in err
    return err


def test_intact_copy_runs(art, capsys):
    assert main(["run", str(art), "--repeats", "1"]) == 0


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_in_library_is_refused(art, capsys):
    lib = art / "model.so"
    flip(lib, lib.stat().st_size // 2)
    assert "model.so does not match" in run_fails(art, capsys)


def test_truncated_library_is_refused_in_a_separate_process(art):
    """Loading a truncated model.so used to kill the process with SIGBUS: run the CLI in
    a child so that a crash shows as a signal, not as the test runner dying."""
    lib = art / "model.so"
    with open(lib, "r+b") as f:
        f.truncate(lib.stat().st_size // 3)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "resdsl", "run", str(art), "--repeats", "1"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "model.so does not match" in proc.stderr and "Traceback" not in proc.stderr


def test_edited_weights_file_is_refused(art, capsys):
    w = art / "weights.safetensors"
    flip(w, w.stat().st_size - 100)                 # inside the tensor data, same size
    assert "weights.safetensors does not match" in run_fails(art, capsys)


def test_swapped_param_names_are_refused(art, capsys):
    meta = meta_of(art)
    params = meta["params"]
    # two parameters of the same shape: swapping them would run, with wrong outputs
    from safetensors.numpy import load_file
    shapes = {n: load_file(str(art / "weights.safetensors"))[n].shape for n in params}
    i, j = next((i, j) for i in range(len(params)) for j in range(i + 1, len(params))
                if shapes[params[i]] == shapes[params[j]])
    params[i], params[j] = params[j], params[i]
    write_meta(art, meta)
    err = run_fails(art, capsys)
    assert "params" in err and params[i] in err


@pytest.mark.parametrize("change", [
    lambda p: p.append("extra.weight"),
    lambda p: p.pop(),
    lambda p: p.__setitem__(0, "renamed.weight"),
], ids=["added", "removed", "renamed"])
def test_edited_param_list_is_refused(art, capsys, change):
    meta = meta_of(art)
    change(meta["params"])
    write_meta(art, meta)
    assert "field `params`" in run_fails(art, capsys)


@pytest.mark.parametrize("field", list(SCHEMA))
def test_missing_metadata_field_is_named(art, capsys, field):
    meta = meta_of(art)
    del meta[field]
    write_meta(art, meta)
    assert f"`{field}` is missing" in run_fails(art, capsys)


@pytest.mark.parametrize("field,value", [
    ("format", "2"), ("format", 2.0), ("format", True),
    ("resdsl_version", 1), ("model", None), ("model", ""), ("spec", 3), ("spec_hash", []),
    ("input_shape", "1x3x32x32"), ("input_shape", [1, 3, -32, 32]), ("input_shape", []),
    ("input_shape", [1, 3, 32.0, 32]), ("input_shape", None),
    ("output_shape", {"n": 1}), ("output_shape", [1, True]),
    ("batch", "1"), ("batch", True), ("batch", 0), ("batch", 2), ("batch", None),
    ("target", "tpu"), ("target", None), ("target", 1), ("target_json", 1),
    ("cpu", 5), ("cpu", None), ("cpu", "x86-64-v9"), ("cuda_arch", 90),
    ("tvm_version", 0.27), ("tuning_db", 1), ("weights", None),
    ("params", "conv.weight"), ("params", [1, 2]), ("params", None),
    ("folded_batch_norms", -1), ("folded_batch_norms", "3"),
    ("weights_sha256", 123), ("weights_sha256", "zz"), ("library_sha256", None),
    ("library_sha256", "A" * 64),
])
def test_ill_typed_metadata_field_is_named(art, capsys, field, value):
    meta = meta_of(art)
    meta[field] = value
    write_meta(art, meta)
    err = run_fails(art, capsys)
    assert f"`{field}`" in err or (field == "format" and "artifact format" in err) \
        or (field == "batch" and "`input_shape`" in err), err


def test_duplicate_param_name_is_refused(art, capsys):
    meta = meta_of(art)
    meta["params"][1] = meta["params"][0]
    write_meta(art, meta)
    assert "`params`" in run_fails(art, capsys)


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "not a JSON object"), ("{", "not valid JSON"), ("", "not valid JSON"),
    ("null", "not a JSON object"), ("[" * 100000, "not valid JSON"),
])
def test_unreadable_metadata_is_refused(art, capsys, text, message):
    (art / "metadata.json").write_text(text)
    assert message in run_fails(art, capsys)


def test_non_utf8_metadata_is_refused(art, capsys):
    (art / "metadata.json").write_bytes(b"\xff\xfe{}")
    assert "metadata.json" in run_fails(art, capsys)


def test_other_format_version_is_refused(art, capsys):
    write_meta(art, dict(meta_of(art), format=1))
    assert "artifact format 1" in run_fails(art, capsys)


def test_weights_file_of_wrong_shape_fails_as_a_clear_error(art, capsys):
    """A weights file that is consistent with its metadata (hash, parameter order) but
    whose tensor shapes are not what the library takes: TVM's error is wrapped."""
    from safetensors.numpy import load_file, save_file
    import hashlib
    meta = meta_of(art)
    w = load_file(str(art / "weights.safetensors"))
    name = meta["params"][-1]
    w[name] = np.zeros((w[name].size + 1,), np.float32)
    save_file(w, str(art / "weights.safetensors"),
              metadata={"resdsl.params": json.dumps(meta["params"])})
    meta["weights_sha256"] = hashlib.sha256((art / "weights.safetensors").read_bytes()) \
        .hexdigest()
    write_meta(art, meta)
    err = run_fails(art, capsys)
    assert str(art) in err


def test_weights_file_without_recorded_order_is_refused(art, capsys):
    from safetensors.numpy import load_file, save_file
    import hashlib
    w = load_file(str(art / "weights.safetensors"))
    save_file(w, str(art / "weights.safetensors"))
    meta = meta_of(art)
    meta["weights_sha256"] = hashlib.sha256((art / "weights.safetensors").read_bytes()) \
        .hexdigest()
    write_meta(art, meta)
    assert "parameter order" in run_fails(art, capsys)


def test_library_file_is_loaded_from_the_hashed_bytes(art, monkeypatch):
    """The library is loaded from a private copy, not from the artifact's path (which
    could be swapped between the hash check and dlopen)."""
    loaded = []
    real = tvm.runtime.load_module
    monkeypatch.setattr(tvm.runtime, "load_module",
                        lambda p: loaded.append(p) or real(p))
    load_artifact(art)
    assert len(loaded) == 1
    assert not os.path.realpath(loaded[0]).startswith(os.path.realpath(art))
    assert not os.path.exists(loaded[0])          # the private copy is removed after loading


# --- inputs of `resdsl run` ------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda: np.zeros((3, 32, 32), np.float64), "float64"),
    (lambda: np.zeros((3, 32, 32), np.int64), "int64"),
    (lambda: np.full((1, 3, 32, 32), np.nan, np.float32), "NaN"),
    (lambda: np.full((3, 32, 32), np.inf, np.float32), "NaN or Inf"),
    (lambda: np.zeros((2, 3, 32, 32), np.float32), "compiled for [1, 3, 32, 32]"),
    (lambda: np.zeros((5,), np.float32), "compiled for"),
])
def test_bad_input_arrays_are_refused(art, tmp_path, capsys, make, message):
    np.save(tmp_path / "x.npy", make())
    assert message in run_fails(art, capsys, "--input", str(tmp_path / "x.npy"))


def test_object_array_input_is_not_unpickled(art, tmp_path, capsys):
    x = np.empty(2, dtype=object)
    x[0], x[1] = {"a": 1}, [1, 2]
    np.save(tmp_path / "x.npy", x, allow_pickle=True)
    err = run_fails(art, capsys, "--input", str(tmp_path / "x.npy"))
    assert "x.npy" in err


@pytest.mark.parametrize("data", [b"", b"not an npy file", b"\x93NUMPY\x01\x00"])
def test_garbage_input_file_is_refused(art, tmp_path, capsys, data):
    (tmp_path / "x.npy").write_bytes(data)
    assert "x.npy" in run_fails(art, capsys, "--input", str(tmp_path / "x.npy"))


def test_python_api_refuses_non_float_input(artifact):
    a = load_artifact(artifact)
    with pytest.raises(resdsl.ResdslError, match="int32"):
        a(np.zeros((1, 3, 32, 32), np.int32))
    with pytest.raises(resdsl.ResdslError, match="NaN"):
        a(np.full((1, 3, 32, 32), np.nan, np.float32))


def test_run_output_is_not_overwritten_without_force(art, tmp_path, capsys):
    out = tmp_path / "y.npy"
    out.write_bytes(b"mine")
    assert "exists" in run_fails(art, capsys, "--output", str(out))
    assert out.read_bytes() == b"mine"
    assert main(["run", str(art), "--repeats", "1", "--output", str(out), "--force"]) == 0
    assert np.load(out).shape == (1, 10)


# --- concurrent publication ------------------------------------------------------------

def test_artifact_appearing_while_building_is_not_replaced(built, tmp_path):
    """Another command publishes the same -o after this one checked it: this one fails
    with the exists error and the other's artifact is kept as it is."""
    out = tmp_path / "out"

    class Racing:
        def export_library(self, path):
            out.mkdir()
            (out / "metadata.json").write_text("theirs")
            built.executable.export_library(path)

    racing = type(built)(Racing(), built.params, built.param_names, built.metadata)
    with pytest.raises(resdsl.ResdslError, match="exists; not overwriting"):
        write_artifact(racing, out)
    assert (out / "metadata.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]       # no temporary left


def test_two_concurrent_compiles_one_wins(tmp_path):
    out = tmp_path / "r20"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "resdsl", "compile", spec("resnet20"), "--target", "llvm",
           "-o", str(out)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        results.append((p.returncode, err))
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "exists; not overwriting" in loser and "--force" in loser
    assert "Traceback" not in loser
    assert load_artifact(out) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20"]


def test_concurrent_file_writes_one_wins(tmp_path):
    from resdsl.atomic import write_bytes
    target = tmp_path / "m.py"
    for _attempt in range(20):
        if target.exists():
            target.unlink()
        barrier = threading.Barrier(8)
        outcomes = []

        def writer(i, barrier=barrier, outcomes=outcomes):
            barrier.wait()
            try:
                write_bytes(target, f"writer {i}".encode(), force=False)
                outcomes.append(("ok", i))
            except FileExistsError:
                outcomes.append(("exists", i))

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for what, i in outcomes if what == "ok"]
        assert len(winners) == 1 and len(outcomes) == 8
        assert target.read_text() == f"writer {winners[0]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]


def test_torch_source_appearing_meanwhile_is_kept(tmp_path, capsys, monkeypatch):
    """compile --target torch: the file appears after the check; it is not replaced."""
    out = tmp_path / "m.py"
    arch_cls = type(resdsl.load(spec("resnet20")))
    real = arch_cls.torch_source

    def racing(self):
        out.write_text("theirs")
        return real(self)

    monkeypatch.setattr(arch_cls, "torch_source", racing)
    assert main(["compile", spec("resnet20"), "--target", "torch", "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert out.read_text() == "theirs"


# --- the tuning database lock ----------------------------------------------------------

def test_second_tune_on_a_locked_database_fails_fast(tmp_path, capsys):
    from filelock import FileLock
    db = tmp_path / "db"
    db.mkdir()
    lock = FileLock(str(db / "resdsl-tune.lock"))
    with lock:
        t = time.perf_counter()
        assert main(["tune", spec("resnet20"), "--target", "llvm", "--trials", "1",
                     "--db", str(db), "-q"]) == 1
        assert time.perf_counter() - t < 10
    err = capsys.readouterr().err
    assert "another `resdsl tune`" in err and "Traceback" not in err
    assert not (db / "database_tuning_record.json").exists()


def test_tune_lock_is_held_while_tuning(tmp_path, monkeypatch):
    """The lock is taken around the tuning itself, and released afterwards."""
    from filelock import FileLock, Timeout

    from resdsl.backends.tvm import tune as tune_mod
    db = tmp_path / "db"
    seen = []

    def fake(*args, **kwargs):
        try:
            FileLock(str(db / "resdsl-tune.lock"), timeout=0).acquire()
            seen.append("free")
        except Timeout:
            seen.append("held")
        return tune_mod.TuneReport(0, 1, str(db))

    monkeypatch.setattr(tune_mod, "_tune", fake)
    tune_mod.tune(resdsl.load(spec("resnet20")), "llvm", 1, str(db))
    assert seen == ["held"]
    with FileLock(str(db / "resdsl-tune.lock"), timeout=0):
        pass


# ---- the writer's and the loader's error paths --------------------------------------------

@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_text("a file")],
                         ids=["absent", "a_file"])
def test_run_of_something_that_is_not_a_directory(tmp_path, capsys, make):
    path = tmp_path / "art"
    make(path)
    assert "no such artifact directory" in run_fails(path, capsys)


def test_force_does_not_replace_a_directory_that_is_not_an_artifact(built, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(resdsl.ResdslError, match="exists"):
            write_artifact(built, out, force=force)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]   # no temporaries left


def test_force_replaces_an_artifact(built, artifact, tmp_path):
    out = tmp_path / "r20"
    shutil.copytree(artifact, out)
    (out / "stale.txt").write_text("from the old build")
    write_artifact(built, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.so", "weights.safetensors", "metadata.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20"]
    assert load_artifact(out).metadata["model"] == "resnet20"


def test_a_failed_write_leaves_nothing_behind(built, tmp_path, monkeypatch):
    class Broken:
        def export_library(self, path):
            open(path, "wb").write(b"half a library")
            raise OSError("disk full")

    monkeypatch.setattr(built, "executable", Broken())
    with pytest.raises(OSError, match="disk full"):
        write_artifact(built, tmp_path / "r20")
    assert list(tmp_path.iterdir()) == []
