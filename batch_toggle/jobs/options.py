"""One JobConfig from a job's options: the CLI and the library build it here, the same way.

Options go by the library's names (the CLI's long names in snake_case: `--on-conflict` ->
`on_conflict`); an option that is absent or None takes the default of its dataclass in
config.py, the one place defaults live. Values are taken in the forms a caller of the library
may give (a map as a dict or as "FIELD=COLUMN" strings, a state as a bool or "true"/"false",
a rate or duration as text or parsed); what click already parsed passes through unchanged.
Errors name the option as the caller knows it: `name` turns "on_conflict" into the CLI's
"--on-conflict". Click-free, so that the library does not load click.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from batch_toggle.config import (
    ON_CONFLICT_CHOICES,
    TRUST_CHOICES,
    JobConfig,
    LoadOptions,
    PlanOptions,
    SendOptions,
    parse_duration,
    parse_rate,
)
from batch_toggle.errors import UsageError
from batch_toggle.input.columns import ColumnMap, MapGiven, parse_column_map
from batch_toggle.send.proxies import normalise_proxy_url, read_proxy_auth_file
from batch_toggle.state.location import normalise
from batch_toggle.vocab import TARGETS

Namer = Callable[[str], str]
_PLAN_NUMBERS = {"max_invalid": float}
_SEND_NUMBERS = {"max_rps": float, "concurrency": int, "timeout": float, "max_attempts": int,
                 "daily_limit": int, "max_requests": int, "halt_after": int, "canary": int}
# The CLI's ranges (click checks them there); the library checks the same here, so that
# concurrency=0 is an error, not a run that sends nothing and reports success.
OPTION_RANGES: dict[str, tuple[float, float]] = {
    "max_invalid": (0, 100), "max_rps": (0.01, float("inf")), "concurrency": (1, 64),
    "timeout": (0.1, float("inf")), "max_attempts": (1, 100), "daily_limit": (1, float("inf")),
    "max_requests": (1, float("inf")), "halt_after": (1, float("inf")),
    "canary": (0, float("inf"))}


def check_rules(command: str, name: Namer = str, *, dry_run: bool = False,
                sandbox: bool = False, resume: bool = False, retry_failed: bool = False,
                api_key: str | None | object = ...) -> None:
    """The rules between a job's options, stated once: the CLI and the library build every
    JobConfig through `job_config`, which checks them, and a caller that builds a JobConfig by
    hand meets them again where the job starts (session.live_config). `name` spells an option
    as the caller knows it: a flag for the CLI (`--resume`), a keyword for the library.
    `api_key` left out: the caller has not looked for one yet (the key is met at the start).
    """
    library = name is str
    if retry_failed and not resume:
        raise UsageError(f"{_switch(name, 'retry_failed')} goes with {_switch(name, 'resume')} "
                         "(it re-sends the retryable failures of the run being resumed)")
    if (command in ("run", "audit") and not dry_run and not sandbox and api_key is not ...
            and not api_key):
        where = ("pass api_key=..., api_key_file=... or set LOGIS_API_KEY" if library
                 else "set LOGIS_API_KEY or use --api-key-file")
        instead = [_switch(name, "sandbox")] + ([_switch(name, "dry_run")]
                                                if command == "run" else [])
        raise UsageError(f"no API key: {where} (or {'use' if library else 'try'} "
                         f"{' / '.join(instead)})")


def _switch(name: Namer, option: str) -> str:
    """A flag as the caller turns it on: `--resume` on the command line, `resume=True` in
    Python."""
    said = name(option)
    return f"{said}=True" if name is str else said


def job_config(command: str, inputs: Sequence[str], options: Mapping[str, Any],
               name: Namer = str, **extra: Any) -> JobConfig:
    """The JobConfig of one command. `extra` sets the JobConfig fields that are not options
    of every command (dry_run, sandbox, resume, retry_failed, api_key)."""
    check_rules(command, name, **{k: extra[k] for k in
                                  ("dry_run", "sandbox", "resume", "retry_failed", "api_key")
                                  if k in extra})
    if extra.get("api_key") is not None and not extra.get("dry_run"):  # a dry run sends none
        check_api_key(extra["api_key"])
    o = {k: v for k, v in options.items() if v is not None}
    load = LoadOptions(
        column_map=column_map(o.get("map"), name), encoding=o.get("encoding"),
        set_state=_state(o.get("set_state"), name),
        default_target=_choice(o.get("default_target"), TARGETS, "default_target", name),
        sheet=_sheet(o.get("sheet"), name))
    for key, (low, high) in OPTION_RANGES.items():
        if key in o and not low <= float(o[key]) <= high:
            bound = f"at least {low:g}" if high == float("inf") else f"{low:g} to {high:g}"
            raise UsageError(f"{name(key)} {o[key]!r}: must be {bound}")
    plan_args: dict[str, Any] = {k: kind(o[k]) for k, kind in _PLAN_NUMBERS.items() if k in o}
    if "on_conflict" in o:
        plan_args["on_conflict"] = _choice(o["on_conflict"], ON_CONFLICT_CHOICES, "on_conflict",
                                           name)
    for flag in ("skip_confirmed", "allow_resubscribe"):
        if flag in o:
            plan_args[flag] = bool(o[flag])
    send_args: dict[str, Any] = {k: kind(o[k]) for k, kind in _SEND_NUMBERS.items() if k in o}
    if o.get("base_url"):
        send_args["base_url"] = o["base_url"]
    if "rate" in o:
        rate = o["rate"]
        send_args["rate"] = parse_rate(rate, name("rate")) if isinstance(rate, str) else rate
    if "stop_after" in o:
        stop = o["stop_after"]
        send_args["stop_after"] = (parse_duration(stop, name("stop_after"))
                                   if isinstance(stop, str) else float(stop))
    if "insecure" in o:
        send_args["insecure"] = bool(o["insecure"])
    send_args.update(_route_options(o, name))
    if o.get("proxy_auth_file") and extra.get("proxy_auth") is None:
        extra["proxy_auth"] = read_proxy_auth_file(Path(o["proxy_auth_file"]),
                                                   name("proxy_auth_file"))
    return JobConfig(
        inputs=tuple(str(i) for i in inputs), command=command, load=load,
        plan=PlanOptions(**plan_args), send=SendOptions(**send_args),
        report_path=_path(o.get("report")), rejects_path=_path(o.get("rejects")),
        state_path=normalise(o.get("state")), html=bool(o.get("html", True)), **extra)


def _route_options(o: Mapping[str, Any], name: Namer) -> dict[str, Any]:
    """--trust, --ca-bundle and --proxy, checked (trust.py, proxies.py)."""
    out: dict[str, Any] = {}
    if o.get("trust"):
        out["trust"] = _choice(str(o["trust"]), TRUST_CHOICES, "trust", name)
    if o.get("ca_bundle"):
        out["ca_bundle"] = str(o["ca_bundle"])
    if o.get("proxy"):
        out["proxy"] = normalise_proxy_url(str(o["proxy"]), name("proxy"))
    return out


def column_map(value: MapGiven, name: Namer = str) -> ColumnMap:
    """The --map pairs (see input/columns.py: the one parser)."""
    return parse_column_map(value, name)


def check_api_key(key: str) -> None:
    """A key that an HTTP header cannot carry (a non-ASCII letter, a newline pasted into the
    key file) would fail every request, or the run, with a traceback: a usage error before
    anything is read or sent instead. The message says where, never what the key is."""
    for at, char in enumerate(key, start=1):
        if not " " <= char <= "~":
            raise UsageError(f"the API key has a character an HTTP header cannot carry at "
                             f"position {at} of {len(key)} (only printable ASCII): check "
                             "LOGIS_API_KEY or the key file")


def read_key_file(path: Path, name: Namer = str) -> str:
    """The API key in `path`, stripped. An unreadable or empty file is an error, never a
    silent fall-back to another key (the environment's may be another account's)."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"{name('api_key_file')} {path}: {exc.strerror or exc}") from exc
    if not key:
        raise UsageError(f"{name('api_key_file')} {path}: the file is empty")
    return key


def _sheet(value: str | int | None, name: Namer) -> str | None:
    """An .xlsx sheet by name, or by 1-based index (an int from the library, or digits)."""
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, int) and value < 1):
        raise UsageError(f"{name('sheet')} {value!r}: a sheet name, or an index from 1")
    text = str(value).strip()
    if not text:
        raise UsageError(f"{name('sheet')} {value!r}: a sheet name, or an index from 1")
    return text


def _state(value: bool | str | None, name: Namer) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise UsageError(f"{name('set_state')} {value!r}: expected true or false")
    return text == "true"


def _choice(value: str | None, choices: tuple[str, ...], option: str,
            name: Namer) -> Any:
    if value is None:
        return None
    text = value.strip().lower()
    if text not in choices:
        raise UsageError(f"{name(option)} {value!r}: expected one of {', '.join(choices)}")
    return text


def _path(value: Any) -> Path | None:
    return None if value is None else Path(value)
