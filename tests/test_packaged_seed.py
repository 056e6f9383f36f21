"""The default sandbox seed ships inside the package, identical to `sample_data/sandbox_seed.csv`.

`sample_data/` is not in the wheel, so the package carries its own copy
(`batch_toggle/sandbox/sandbox_seed.csv`, package data in pyproject.toml). It is the world every
--sandbox uses; sample_data/make_samples.py writes both files, and the sample files refer to its
jobs, so the two must never drift apart: the first test fails the moment they differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import batch_toggle.sandbox.config as sandbox_config
from batch_toggle.sandbox import create_app, default_seed_path, load_seed

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SEED = REPO / "sample_data" / "sandbox_seed.csv"
PACKAGED_SEED = REPO / "batch_toggle" / "sandbox" / "sandbox_seed.csv"


def test_the_packaged_seed_is_byte_identical_to_the_sample_seed() -> None:
    assert PACKAGED_SEED.read_bytes() == SAMPLE_SEED.read_bytes(), (
        "batch_toggle/sandbox/sandbox_seed.csv differs from sample_data/sandbox_seed.csv: "
        "regenerate both with `.venv/bin/python sample_data/make_samples.py`"
    )


def test_the_default_seed_is_the_packaged_file_whatever_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory with its own sample_data/sandbox_seed.csv must not change the default: the
    # default is the one file that ships with the package.
    decoy = tmp_path / "sample_data" / "sandbox_seed.csv"
    decoy.parent.mkdir()
    decoy.write_text("job_id,review_key\n1,2\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    path = default_seed_path()

    assert path == Path(sandbox_config.__file__).resolve().with_name("sandbox_seed.csv")
    assert path.is_file()
    assert path.read_bytes() == SAMPLE_SEED.read_bytes()


def test_an_app_built_without_a_seed_serves_the_shipped_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `run --sandbox` and `audit --sandbox` do (SandboxConfig() with no seed), from a
    # directory without sample_data/.
    monkeypatch.chdir(tmp_path)
    app = create_app()
    shipped = load_seed(SAMPLE_SEED)
    assert [j.job_id for j in app.state.world.seed.jobs] == [j.job_id for j in shipped.jobs]


def test_regenerating_the_samples_writes_both_seeds_byte_identical_to_the_committed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # make_samples.py is seeded: run into a scratch directory, it must write the committed bytes,
    # and the packaged copy beside them (so a regeneration cannot leave the two apart).
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_samples",
                                                  REPO / "sample_data" / "make_samples.py")
    assert spec is not None and spec.loader is not None
    make_samples = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_samples", make_samples)  # its dataclass looks there
    spec.loader.exec_module(make_samples)
    assert make_samples.PACKAGED_SEED == PACKAGED_SEED
    packaged = tmp_path / "package" / "sandbox_seed.csv"
    packaged.parent.mkdir()
    monkeypatch.setattr(make_samples, "HERE", tmp_path)
    monkeypatch.setattr(make_samples, "PACKAGED_SEED", packaged)

    make_samples.main()

    capsys.readouterr()
    assert packaged.read_bytes() == SAMPLE_SEED.read_bytes()
    for name in ("sandbox_seed.csv", "optouts_2026_11.csv", "optouts_2026_11.parquet",
                 "optouts_2026_11.expected.json", "optins_migration.csv"):
        assert (tmp_path / name).read_bytes() == (REPO / "sample_data" / name).read_bytes(), name
