"""Where the API key comes from, and the environment hygiene around it.

The key never comes from argv (it would show in `ps` and shell history). Once read it is dropped
from the process environment so that no child process or crash reporter inherits it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

ENV_KEY = "LOGIS_API_KEY"
SSLKEYLOG_ENV = "SSLKEYLOGFILE"


def drop_sslkeylogfile() -> bool:
    """Remove SSLKEYLOGFILE from the environment; True when it was set."""
    return os.environ.pop(SSLKEYLOG_ENV, None) is not None


# Dropped the moment the CLI starts (cli/__init__.py imports this module before anything
# else), not when a command reads the key: pyarrow's libarrow, which most of batch-toggle
# loads, opens $SSLKEYLOGFILE as it loads. read_api_key() gives the warning.
_dropped_at_start = drop_sslkeylogfile()


def read_api_key(key_file: Path | None, warn: Callable[[str], None]) -> str | None:
    """The key from --api-key-file or LOGIS_API_KEY (file wins); None when neither is set."""
    global _dropped_at_start
    from_env = os.environ.pop(ENV_KEY, None)
    ignored, _dropped_at_start = drop_sslkeylogfile() or _dropped_at_start, False
    if ignored:
        warn("warning: SSLKEYLOGFILE is set and ignored: it would write TLS secrets to disk")
    if key_file is not None:
        # Imported here, not at the top: this module must load nothing that loads libarrow
        # before SSLKEYLOGFILE is dropped (job_options loads the jobs layer).
        from batch_toggle.config import cli_name
        from batch_toggle.jobs.options import read_key_file

        return read_key_file(key_file, cli_name)
    key = (from_env or "").strip()
    return key or None
