"""The default sandbox seed ships inside the package, identical to `sample_data/sandbox_seed.csv`.

`sample_data/` is not in the wheel, so the package carries its own copy
(`batch_toggle/sandbox/sandbox_seed.csv`, package data in pyproject.toml). The sample file stays
the source (make_samples.py writes it; the README, the Makefile demo and the docs name it), so the
copy must never drift from it: the first test fails the moment they differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import batch_toggle.sandbox.config as sandbox_config
from batch_toggle.sandbox import create_app, default_seed_path, load_seed

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SEED = REPO / "sample_data" / "sandbox_seed.csv"
PACKAGED_SEED = REPO / "batch_toggle" / "sandbox" / "sandbox_seed.csv"


def test_the_packaged_seed_is_byte_identical_to_the_sample_seed() -> None:
    assert PACKAGED_SEED.read_bytes() == SAMPLE_SEED.read_bytes(), (
        "batch_toggle/sandbox/sandbox_seed.csv differs from sample_data/sandbox_seed.csv: after "
        "regenerating the samples, run `cp sample_data/sandbox_seed.csv batch_toggle/sandbox/`"
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
