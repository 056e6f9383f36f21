"""Installed from a wheel (not editable), run from an empty directory, `--sandbox` still works.

The wheel is built offline with the build backend already installed here (setuptools, no build
isolation, no index) from a copy of the project, so nothing is written into the checkout, and
installed into a fresh venv under tmp_path. The venv sees the dependencies through a .pth line
naming this interpreter's site-packages: only directories listed in a .pth are added, the .pth
files inside them are not run, so the checkout's editable install stays invisible and
`batch_toggle` can only come from the wheel.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "optouts_2026_11.csv"
SAMPLE_EXPECTED = REPO / "sample_data" / "optouts_2026_11.expected.json"
SAMPLE_SEED = REPO / "sample_data" / "sandbox_seed.csv"
SEED_IN_WHEEL = "batch_toggle/sandbox/sandbox_seed.csv"
TIMEOUT = 120.0
# pyproject.toml's `license = "MIT"` (a PEP 639 string) needs setuptools 77 or later to build.
MIN_SETUPTOOLS = (77,)


def _setuptools_version() -> str:
    try:
        return version("setuptools")
    except PackageNotFoundError:
        return "none"


def _major(text: str) -> tuple[int, ...]:
    head = text.split(".")[0]
    return (int(head),) if head.isdigit() else ()


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def _clean_env() -> dict[str, str]:
    """The parent's environment minus anything that could put the checkout on the path or give
    the CLI a Logis setting."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "SSLKEYLOGFILE")
            and not k.startswith("LOGIS_")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    found = _setuptools_version()
    if _major(found) < MIN_SETUPTOOLS:
        pytest.skip(f"building the wheel offline needs setuptools>={MIN_SETUPTOOLS[0]} here "
                    f"(found {found}): `.venv/bin/python -m pip install "
                    f"'setuptools>={MIN_SETUPTOOLS[0]}'`")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "batch_toggle", src / "batch_toggle",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--no-index", "--disable-pip-version-check", "-w", str(out), str(src)],
                 cwd=out, env=_clean_env())
    assert built.returncode == 0, built.stdout + built.stderr
    (whl,) = out.glob("batch_toggle-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; its bin/ directory."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=env_dir, env=_clean_env()).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n",
                                                 encoding="utf-8")
    # --ignore-installed: pip sees the checkout's editable dist-info through the .pth line and
    # must neither touch it nor count it as already installed.
    done = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                 "--no-index", "--ignore-installed", "--disable-pip-version-check", str(wheel)],
                cwd=env_dir, env=_clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return env_dir / "bin"


def test_the_wheel_ships_the_default_seed(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        assert SEED_IN_WHEEL in zf.namelist()
        assert zf.read(SEED_IN_WHEEL) == SAMPLE_SEED.read_bytes()


def test_the_installed_package_is_the_wheel_and_its_default_seed_is_inside_it(
    installed: Path, tmp_path: Path
) -> None:
    probe = ("import batch_toggle, json; from batch_toggle.sandbox import default_seed_path; "
             "p = default_seed_path(); "
             "print(json.dumps([batch_toggle.__file__, str(p), p.is_file()]))")
    done = _run([str(installed / "python"), "-c", probe], cwd=tmp_path, env=_clean_env())
    assert done.returncode == 0, done.stderr
    package_file, seed, exists = json.loads(done.stdout)
    venv_dir = installed.parent.resolve()
    assert Path(package_file).resolve().is_relative_to(venv_dir), package_file
    assert Path(seed).resolve().is_relative_to(venv_dir), seed
    assert exists


@pytest.mark.parametrize("command", ["run", "audit"])
def test_sandbox_from_an_empty_directory_uses_the_shipped_seed(
    installed: Path, tmp_path: Path, command: str
) -> None:
    cwd = tmp_path / "empty"
    cwd.mkdir()
    data = cwd / SAMPLE.name
    shutil.copy2(SAMPLE, data)
    report = cwd / "report.csv"

    done = _run([str(installed / "batch-toggle"), command, data.name, "--sandbox",
                 "--max-rps", "500", "--no-progress", "--report", report.name],
                cwd=cwd, env=_clean_env())

    # Exit 1 by design: the sample's planted bad rows need attention (as in `make demo`).
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    with report.open(newline="", encoding="utf-8") as fh:
        statuses = Counter(row["status"] for row in csv.DictReader(fh))
    expected = json.loads(SAMPLE_EXPECTED.read_text(encoding="utf-8"))["status_counts"]
    if command == "run":
        # The sample's jobs were all found: the seed loaded is the shipped one.
        assert statuses == Counter(expected)
    else:
        assert sum(statuses.values()) == sum(expected.values())
        assert statuses["in_sync"] + statuses["would_change"] > 0
