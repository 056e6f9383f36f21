"""The click command line: parse options, build the config, call the library, map errors to exits.

This package is the only place that imports click.
"""

from __future__ import annotations

import click

from batch_toggle import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batch-toggle")
def main() -> None:
    """Bring Logis SMS-notification preferences into agreement with a file."""
