"""Golden tests: every way a spec can be wrong gives file:line:col, the line, a caret and a
hint on stderr, exit status 1, and never a traceback.

Each tests/errors/NAME.arch has its expected stderr in NAME.err. A first line
`# resdsl-args: ...` adds command-line arguments. To re-bless after an intended
change of wording: RESDSL_UPDATE_GOLDEN=1 pytest tests/test_errors.py, then review the diff.
"""

import os
from pathlib import Path

import pytest

from resdsl.cli import main

ERRORS = Path("tests/errors")
CASES = sorted(p.stem for p in (Path(__file__).parent / "errors").glob("*.arch"))


def run_check(path: Path, capsys) -> tuple[int, str]:
    first = path.read_text().splitlines()[0]
    extra = first.split(":", 1)[1].split() if first.startswith("# resdsl-args:") else []
    code = main(["check", *extra, str(path)])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("case", CASES)
def test_error_message(case, capsys):
    path = ERRORS / f"{case}.arch"
    code, err = run_check(path, capsys)
    golden = ERRORS / f"{case}.err"
    if os.environ.get("RESDSL_UPDATE_GOLDEN"):
        golden.write_text(err)
    assert code == 1
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert ": error: " in first and first.split(":")[1].isdigit() and first.split(":")[2].isdigit()
    assert "\n" in err and "^" in err, "the source line and a caret are shown"
    assert err == golden.read_text()


def test_every_golden_has_a_case():
    goldens = {p.stem for p in (Path(__file__).parent / "errors").glob("*.err")}
    assert goldens == set(CASES)


def test_error_kinds_required_by_the_foundation_issue_are_covered():
    required = {"syntax_unclosed", "unknown_name", "unknown_block", "unknown_op",
                "unknown_argument", "wrong_arity", "wrong_argument_type", "add_shape_mismatch",
                "groups_not_divisible", "spatial_collapse", "concat_spatial_mismatch", "cycle",
                "import_not_found", "import_cycle"}
    assert required <= set(CASES)
