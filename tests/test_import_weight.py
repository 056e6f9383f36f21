"""What each way in loads: a command that needs little must not pay for the rest.

Each case runs in a fresh interpreter (a module once imported stays imported) and reports the
heavy modules it ended with, at exit, whatever the command's own exit code was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "optouts_2026_11.csv"
HEAVY = ("pyarrow", "httpx", "pandas")

PROBE = """\
import atexit, json, sys
atexit.register(lambda: print("LOADED=" + json.dumps(
    sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.__stderr__))
sys.argv = ["batch-toggle", *{argv!r}]
{body}
"""


def loaded(argv: list[str], body: str, cwd: Path) -> list[str]:
    code = PROBE.format(heavy=HEAVY, argv=argv, body=body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, timeout=60, stdin=subprocess.DEVNULL)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("LOADED="))
    return json.loads(line.removeprefix("LOADED="))


def test_import_batch_toggle_loads_none_of_the_heavy_libraries(tmp_path: Path) -> None:
    assert loaded([], "import batch_toggle", tmp_path) == []


def test_the_command_line_never_loads_pandas_even_when_it_is_installed(tmp_path: Path) -> None:
    """pyarrow would import it on its first conversion of Python values, to check for
    DataFrames the command line never has (0.3 s a start)."""
    pytest.importorskip("pandas")
    argv = ["validate", str(SAMPLE), "--report", str(tmp_path / "r.csv"), "--quiet"]
    assert "pandas" not in loaded(argv, "from batch_toggle.cli.entry import main; main()", tmp_path)


def test_validate_never_loads_httpx(tmp_path: Path) -> None:
    argv = ["validate", str(SAMPLE), "--report", str(tmp_path / "r.csv"), "--quiet"]
    assert "httpx" not in loaded(argv, "from batch_toggle.cli.entry import main; main()", tmp_path)


@pytest.mark.parametrize("argv", [["--help"], ["validate", "--help"], ["run", "--help"],
                                  ["audit", "--help"], ["status", "--help"],
                                  ["doctor", "--help"], ["sandbox", "--help"], ["--version"]],
                         ids=lambda argv: " ".join(argv))
def test_help_loads_neither_pyarrow_nor_httpx(argv: list[str], tmp_path: Path) -> None:
    """--help is what a person types first: it answers at once, without the data and network
    libraries (0.46 s and 126 MB when it loaded pyarrow)."""
    body = "from batch_toggle.cli.entry import main; main()"
    assert loaded(argv, body, tmp_path) == []
