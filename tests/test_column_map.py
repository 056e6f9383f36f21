"""--map means the same wherever it is given: one parser (input/columns.py) for the CLI, the
library and the loader, with one set of rules."""

from __future__ import annotations

import pytest

import batch_toggle
from batch_toggle.config import cli_name
from batch_toggle.errors import UsageError
from batch_toggle.jobs.options import job_config


def test_a_map_means_the_same_from_the_cli_the_library_and_the_loader() -> None:
    """Loose field names (as the loader always took them) and a field given two columns
    refused, in every form; job_options used to accept only exact lowercase fields and let
    the loader refuse the duplicate later, after the outputs were checked."""
    given = {"job-id": "Job Ref", "ReviewKey": "Tracking Key"}
    expected = (("job_id", "Job Ref"), ("review_key", "Tracking Key"))
    library = batch_toggle._config("validate", "in.csv", {"map": given})
    cli = job_config("validate", ["in.csv"], {"map": [f"{f}={c}" for f, c in given.items()]},
                     name=cli_name)
    assert library.load.column_map == cli.load.column_map == expected
    with pytest.raises(UsageError, match=r"^--map job_id given twice \('A', 'B'\)"):
        job_config("validate", ["in.csv"], {"map": ["job_id=A", "job-id=B"]}, name=cli_name)
