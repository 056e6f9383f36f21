"""`--config FILE` and `BATCH_TOGGLE_*` variables: the options an operator repeats every month.

    # batch-toggle.toml
    rate = "1000/h"                 # top level: every command that has the option
    on-conflict = "opt-out-wins"
    state = "state/batch-toggle.sqlite"   # relative paths are relative to this file
    map = { review_key = "Tracking Key" }

    [run]                           # a command's own table wins over the top level
    canary = 20
    rejects = "reports/fix-me.csv"

Keys are the long option names without `--` (`on-conflict` or `on_conflict`). The same options
come from the environment as `BATCH_TOGGLE_<NAME>` (`BATCH_TOGGLE_RATE=1000/h`,
`BATCH_TOGGLE_ON_CONFLICT=opt-out-wins`), except repeatable ones such as `--map` (file only).
Precedence: flags > env > file > defaults. The CLI gets it from click itself: a flag on the
command line, then the option's envvar, then `ctx.default_map` (built here from the file), then
the option's default.

The API key is never taken from here: a key named like one (`api-key`, `logis-api-key`, ...) in
the file, or a `BATCH_TOGGLE_API_KEY`-like variable, is refused with a clear error. Config files
get copied, committed and mailed; the key belongs in `LOGIS_API_KEY` or `--api-key-file`.

This module knows nothing of click: the CLI describes its options as `OptionSpec`s.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final

from batch_toggle.errors import UsageError
from batch_toggle.state.location import is_postgres_url

ENV_PREFIX: Final = "BATCH_TOGGLE_"
CONFIG_ENV: Final = "BATCH_TOGGLE_CONFIG"  # the config file's path, like --config

# Names under which an API key might be offered; all refused, in the file and in the env.
SECRET_KEYS: Final = frozenset({"api_key", "apikey", "logis_api_key", "key", "api_token",
                                "token", "secret"})

SECRET_REFUSAL: Final = ("the API key is never read from a config file or BATCH_TOGGLE_ "
                         "variables; set LOGIS_API_KEY or use --api-key-file")


@dataclass(frozen=True)
class OptionSpec:
    """What the config layer needs to know of one command-line option."""

    key: str  # normalised long name: `on_conflict` for --on-conflict
    param: str  # the name click passes to the command (`state_path` for --state)
    multiple: bool = False  # repeatable (--map): a list in the file, never from env
    is_path: bool = False  # relative paths in the file are relative to the file
    is_flag: bool = False


Specs = Mapping[str, Mapping[str, OptionSpec]]  # command -> key -> spec


def normalise_key(key: str) -> str:
    """`On-Conflict` -> `on_conflict`: the file accepts the flag spelling and snake case."""
    return key.strip().lower().replace("-", "_")


def env_name(key: str) -> str:
    """`on_conflict` -> `BATCH_TOGGLE_ON_CONFLICT`."""
    return ENV_PREFIX + normalise_key(key).upper()


def read_config(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is a UsageError naming it."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path}: not valid TOML: {exc}") from exc


def default_map(path: Path, specs: Specs) -> dict[str, dict[str, Any]]:
    """The click default_map (command -> param -> value) that the file at `path` asks for.

    Top-level keys go to every command that has the option (at least one must); a table named
    after a command holds that command's own values and wins over the top level. Unknown keys,
    secret-looking keys and values of the wrong shape are UsageErrors naming the file and key.
    """
    data = read_config(path)
    base = path.resolve().parent
    top = {k: v for k, v in data.items() if not (isinstance(v, dict) and k in specs)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict) and k in specs}
    result: dict[str, dict[str, Any]] = {command: {} for command in specs}
    for raw_key, value in top.items():
        key = _checked_key(raw_key, path, None)
        owners = [c for c, options in specs.items() if key in options]
        if not owners:
            raise UsageError(f"--config {path}: unknown option {raw_key!r}{_hint(key, specs)}")
        for command in owners:
            spec = specs[command][key]
            result[command][spec.param] = _value(spec, value, path, base, raw_key)
    for command, table in sections.items():
        for raw_key, value in table.items():
            key = _checked_key(raw_key, path, command)
            own = specs[command].get(key)
            if own is None:
                raise UsageError(f"--config {path}: [{command}] has no option {raw_key!r}")
            result[command][own.param] = _value(own, value, path, base,
                                                 f"[{command}] {raw_key}")
    return {command: values for command, values in result.items() if values}


def _checked_key(raw_key: str, path: Path, command: str | None) -> str:
    key = normalise_key(raw_key)
    if key in SECRET_KEYS:
        where = f"[{command}] " if command else ""
        raise UsageError(f"--config {path}: {where}{raw_key!r} refused: {SECRET_REFUSAL}")
    return key


def _hint(key: str, specs: Specs) -> str:
    known = sorted({k for options in specs.values() for k in options})
    close = [k for k in known if k.startswith(key[:4])] if len(key) >= 4 else []
    return f" (did you mean {', '.join(k.replace('_', '-') for k in close)}?)" if close else ""


def _value(spec: OptionSpec, value: Any, path: Path, base: Path, where: str) -> Any:
    """A file value in the shape click expects for the option."""
    if isinstance(value, datetime | date | time):
        raise UsageError(f"--config {path}: {where}: write the value as a string")
    if spec.multiple:
        return _multiple(spec, value, path, where)
    if isinstance(value, dict | list):
        raise UsageError(f"--config {path}: {where}: expected a single value, not a "
                         f"{'table' if isinstance(value, dict) else 'list'}")
    if spec.is_flag and not isinstance(value, bool):
        raise UsageError(f"--config {path}: {where}: expected true or false")
    if (spec.is_path and isinstance(value, str) and value and value != "-"
            and not is_postgres_url(value)):
        candidate = Path(value).expanduser()
        return str(candidate if candidate.is_absolute() else base / candidate)
    return value


def _multiple(spec: OptionSpec, value: Any, path: Path, where: str) -> list[str]:
    """A repeatable option: a list of strings, or (for --map) a table FIELD = "COLUMN"."""
    if isinstance(value, dict):
        return [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"--config {path}: {where}: expected a list of strings or a table")


def check_environment(environ: MutableMapping[str, str], specs: Specs) -> list[str]:
    """Refuse an API key offered through BATCH_TOGGLE_ variables (UsageError; the variable is
    dropped from the environment first, so no child process inherits it). Returns warnings for
    BATCH_TOGGLE_ variables that name no option (a typo would otherwise be silently ignored)."""
    known = {env_name(k) for options in specs.values() for k, s in options.items()
             if not s.multiple}
    known.add(CONFIG_ENV)
    warnings = []
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX)):
        key = normalise_key(name[len(ENV_PREFIX):])
        if key in SECRET_KEYS:
            environ.pop(name, None)
            raise UsageError(f"{name} is set and refused: {SECRET_REFUSAL}")
        if name not in known:
            why = (" (repeatable options such as --map come only from the config file)"
                   if any(key in options for options in specs.values()) else "")
            warnings.append(f"warning: {name} names no batch-toggle option; ignored{why}")
    return warnings


__all__ = ["CONFIG_ENV", "ENV_PREFIX", "OptionSpec", "SECRET_KEYS", "check_environment",
           "default_map", "env_name", "normalise_key", "read_config"]
