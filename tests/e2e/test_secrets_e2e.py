"""Secrets end to end: run every command with a recognisable API key and recognisable review
keys, then scan every byte the tool wrote or printed.

  * The API key never appears: not on stdout or stderr, not in any report format, summary,
    HTML report, rejects, events, state store (database, -wal, -shm, .lock) or any stray file.
  * A full review key appears only in the --rejects file (which exists to be fixed and re-run).
  * A proxy's password appears nowhere, not even in --rejects: runs and doctor go through a
    real proxy (tinyproxy) with credentials in HTTP_PROXY and in --proxy-auth-file, and once
    with a wrong password (the 407 path's messages).

"Appears" covers the forms a key takes on its way through the tool: as given, lower case,
upper case, and without hyphens (a review key is sent as lowercase 8-4-4-4-12 whatever form
the file had). Compressed files (Parquet) are scanned decoded as well as raw.

The live runs hit the error paths on purpose (503, HTML 502, reset, timeout, 429, wrong review
key, unknown job, invalid and conflicting rows), since an error message is where a secret
most easily slips out.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batch_toggle.cli.secrets import ENV_KEY, read_api_key

from .forward_proxy import PROXY_PEER, Tinyproxy, tinyproxy_path

pytestmark = pytest.mark.e2e

CLI_TIMEOUT = 60.0
N_JOBS = 12


@dataclass
class World:
    """The secrets of one test: the API key, the seed's review keys, and where things are."""

    tmp: Path
    api_key: str
    review_keys: list[str]  # every review key the test knows (seed, wrong, near-miss)
    inputs: Path
    outputs: list[tuple[str, bytes]] = field(default_factory=list)  # (what, stdout/stderr)
    rejects: list[Path] = field(default_factory=list)
    proxy_secrets: list[str] = field(default_factory=list)  # never anywhere, rejects included


def make_seed(path: Path, n: int) -> list[dict[str, str]]:
    """A seed of n jobs with fresh random review keys, each job its own client."""
    rows = [{"job_id": str(uuid.uuid4()), "review_key": str(uuid.uuid4()),
             "client_id": str(uuid.uuid4()), "do_notify_sms": "true",
             "client_do_notify_sms": "true"} for _ in range(n)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def key_forms(key: str) -> list[str]:
    """The shapes the input file gives a review key in (all normalise to the same key)."""
    bare = key.replace("-", "")
    return [key, key.upper(), f"{{{key.upper()}}}", f"urn:uuid:{key}", bare, f"  {bare.upper()} ",
            key, key.upper(), key, key, key, key]


def write_inputs(path: Path, seed: list[dict[str, str]], wrong: str, near_miss: str,
                 conflict_key: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Job ID", "Review Key", "SMS", "Target", "Note"])
        for i, job in enumerate(seed):
            forms = key_forms(job["review_key"])
            form = forms[i % len(forms)]
            writer.writerow([job["job_id"], form, "false", "job" if i % 3 else "client",
                             f"row {i}"])
        writer.writerow([seed[0]["job_id"], wrong, "false", "job", "wrong review key"])
        writer.writerow([str(uuid.uuid4()), str(uuid.uuid4()), "false", "job", "unknown job"])
        writer.writerow([seed[1]["job_id"], near_miss, "false", "job", "invalid review key"])
        writer.writerow([seed[2]["job_id"], conflict_key, "false", "job", "conflict"])


def scripted_faults(seed: list[dict[str, str]]) -> dict[str, list[str]]:
    return {seed[3]["job_id"]: ["503", "reset"], seed[4]["job_id"]: ["html502"],
            seed[5]["job_id"]: ["timeout"], seed[6]["job_id"]: ["429:1"],
            seed[7]["job_id"]: ["500", "500"]}


@pytest.fixture
def world(tmp_path: Path, make_sandbox_server: Callable[..., Any]) -> Iterator[Any]:
    api_key = f"SECRETKEY-{secrets.token_hex(12)}"
    seed_path = tmp_path / "seed" / "seed.csv"
    seed_path.parent.mkdir()
    seed = make_seed(seed_path, N_JOBS)
    wrong, conflict_key = str(uuid.uuid4()), str(uuid.uuid4())
    near_miss = str(uuid.uuid4())[:-1] + "g"  # one character off a UUID: invalid, still secret
    work = tmp_path / "work"
    work.mkdir()
    inputs = tmp_path / "seed" / "input.csv"
    write_inputs(inputs, seed, wrong, near_miss, conflict_key)
    srv = make_sandbox_server(seed=seed_path, api_keys=(api_key,), timeout_delay_s=0.8)
    keys = [j["review_key"] for j in seed] + [wrong, near_miss, conflict_key]
    yield srv, World(work, api_key, keys, inputs), seed


def cli(w: World, *args: str, what: str, env_key: bool = True,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `batch-toggle ARGS` in the work directory (so a stray default file lands there and
    is scanned) with the key in the environment; keep its stdout and stderr for the scan."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGIS_")}
    env.update({"XDG_STATE_HOME": str(w.tmp / "xdg"), "PYTHONUNBUFFERED": "1",
                "SSLKEYLOGFILE": str(w.tmp / "sslkeys.log"), **(extra_env or {})})
    if env_key:
        env[ENV_KEY] = w.api_key
    proc = subprocess.run([sys.executable, "-m", "batch_toggle", *args], cwd=w.tmp, env=env,
                          capture_output=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
    w.outputs += [(f"{what} stdout", proc.stdout), (f"{what} stderr", proc.stderr)]
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    return proc


def forms_of(secret: str) -> set[str]:
    return {secret, secret.lower(), secret.upper(), secret.replace("-", ""),
            secret.replace("-", "").upper(), secret.replace("-", "").lower()}


def decoded_views(path: Path) -> Iterable[tuple[str, bytes]]:
    """The bytes of a file as stored, and decoded where storage may hide text (Parquet pages
    are compressed)."""
    data = path.read_bytes()
    yield str(path), data
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        yield f"{path} (decoded)", json.dumps(table.to_pylist(), default=str).encode()


def find(secrets_: Sequence[str], views: Iterable[tuple[str, bytes]]) -> list[str]:
    """Where any form of any secret occurs: 'what: secret[:8]…'."""
    hits = []
    for what, data in views:
        for secret in secrets_:
            if any(form.encode() in data for form in forms_of(secret)):
                hits.append(f"{what}: {secret[:8]}…")
    return hits


def scan(w: World) -> None:
    """The heart of the test: nothing written or printed holds a secret, rejects aside."""
    written = sorted(p for p in w.tmp.rglob("*") if p.is_file())
    assert written, "nothing was written?"
    rejects = set(w.rejects)
    everywhere = [v for p in written if p not in rejects for v in decoded_views(p)]
    everywhere += w.outputs
    assert not find([w.api_key], everywhere), "the API key leaked"
    all_views = everywhere + [v for p in w.rejects for v in decoded_views(p)]
    assert not find(w.proxy_secrets, all_views), "a proxy password leaked"
    for path in w.rejects:
        assert not find([w.api_key], decoded_views(path)), "the API key is in a rejects file"
    assert not find(w.review_keys, everywhere), "a full review key outside --rejects"
    # The scan can see: the rejects files do hold full review keys (wrong key, near miss...).
    assert find(w.review_keys, (v for p in w.rejects for v in decoded_views(p)))
    # ... and the masked form (last four characters) is what the reports show.
    assert any(k[-4:].encode() in data for _w, data in everywhere for k in w.review_keys)


# --- the test ---------------------------------------------------------------------------------


def test_no_command_writes_or_prints_a_secret(world: Any) -> None:
    srv, w, seed = world
    out = w.tmp / "out"
    inputs = str(w.inputs)
    n_rows = N_JOBS + 4

    rejects = out / "validate.rejects.csv"
    w.rejects.append(rejects)
    p = cli(w, "validate", inputs, "--report", str(out / "validate.parquet"), "--rejects",
            str(rejects), "-v", "--state", str(w.tmp / "live-csv" / "state.sqlite"),
            what="validate")
    assert p.returncode == 1, p.stderr

    rejects = out / "dry.rejects.jsonl"
    w.rejects.append(rejects)
    p = cli(w, "run", inputs, "--dry-run", "--report", str(out / "dry.jsonl"), "--rejects",
            str(rejects), "--events", str(out / "dry.events.jsonl"), "-v", "--state",
            str(w.tmp / "dry" / "state.sqlite"), what="dry run")
    assert p.returncode == 1, p.stderr

    for fmt in ("csv", "parquet", "jsonl"):
        srv.reset()
        srv.set_faults(scripted=scripted_faults(seed))
        rejects = out / f"live-{fmt}.rejects.{fmt}"
        w.rejects.append(rejects)
        state = w.tmp / f"live-{fmt}" / "state.sqlite"
        args = ["run", inputs, "--base-url", srv.base_url, "--state", str(state),
                "--report", str(out / f"live.{fmt}"), "--rejects", str(rejects),
                "--events", str(out / f"live-{fmt}.events.jsonl"),
                "-vv" if fmt == "csv" else "-v",  # -vv: a line per row, retries, pauses
                "--max-rps", "500", "--timeout", "0.5", "--max-attempts", "2",
                "--concurrency", "2"]
        if fmt == "parquet":  # the key from a file, not the environment
            key_file = w.tmp.parent / "key.txt"
            key_file.write_text(w.api_key + "\n", encoding="utf-8")
            args += ["--api-key-file", str(key_file)]
        p = cli(w, *args, what=f"live {fmt}", env_key=fmt != "parquet")
        assert p.returncode == 1, p.stderr
        statuses = report_statuses(out / f"live.{fmt}")
        assert len(statuses) == n_rows
        assert {"updated", "failed", "invalid", "conflict"} <= set(statuses), statuses
        assert b"SSLKEYLOGFILE is set and ignored" in p.stderr
        # The scan below reads real verbose output: retries, the 429 pause, (-vv) every row.
        assert b" retry: job " in p.stderr and b" 429: every worker pauses" in p.stderr
        assert (b"Z row " in p.stderr) is (fmt == "csv")  # after the UTC timestamp
        assert srv.requests(), "the live run reached the server"
        assert all(r["key_hint"] != w.api_key for r in srv.requests())

    # A resume of a finished run (starts a new one, sends what is left: the failures).
    p = cli(w, "run", inputs, "--resume", "--retry-failed", "--base-url", srv.base_url,
            "--state", str(w.tmp / "live-csv" / "state.sqlite"), "--report",
            str(out / "resumed.csv"), "--max-rps", "500", "-v", what="resume")
    assert p.returncode in (0, 1), p.stderr

    p = cli(w, "status", "--state", str(w.tmp / "live-csv" / "state.sqlite"), what="status")
    assert p.returncode == 0 or b"No such command" in p.stderr, p.stderr

    srv.reset()
    srv.set_faults(scripted={seed[8]["job_id"]: ["503"], seed[9]["job_id"]: ["reset"]})
    rejects = out / "audit.rejects.csv"
    w.rejects.append(rejects)
    p = cli(w, "audit", inputs, "--base-url", srv.base_url, "--report",
            str(out / "audit.parquet"), "--rejects", str(rejects), "--events",
            str(out / "audit.events.jsonl"), "-v", "--max-rps", "500", "--state",
            str(w.tmp / "audit" / "state.sqlite"), what="audit")
    if b"No such command" in p.stderr:
        print("audit: not available in this version; not scanned")
    else:
        assert p.returncode in (0, 1), p.stderr

    assert cli(w, "sandbox", "--help", what="sandbox --help").returncode == 0

    # A bad --base-url and a refused key: the error paths of the CLI itself.
    cli(w, "run", inputs, "--base-url", "http://example.com", "--state",
        str(w.tmp / "refused" / "state.sqlite"), "--report", str(out / "refused.csv"),
        what="http refused")
    srv.set_key(w.api_key, active=False)
    cli(w, "run", inputs, "--base-url", srv.base_url, "--state",
        str(w.tmp / "inactive" / "state.sqlite"), "--report", str(out / "inactive.csv"),
        "-v", what="inactive key")

    through_a_proxy(srv, w, inputs, out)

    assert not (w.tmp / "sslkeys.log").exists(), "SSLKEYLOGFILE was honoured"
    store_files = {p.name for p in (w.tmp / "live-csv").iterdir()}
    assert {"state.sqlite", "state.sqlite.lock"} <= store_files
    scan(w)


def through_a_proxy(srv: Any, w: World, inputs: str, out: Path) -> None:
    """Live runs and doctor through tinyproxy asking for credentials: given in HTTP_PROXY, in
    --proxy-auth-file, and wrong (its refusal is an error path where a URL is easily echoed)."""
    if tinyproxy_path() is None:
        print("tinyproxy not installed (make system-deps): proxy credentials not scanned")
        return
    user, password = "proxyuser", f"PROXYPASS-{secrets.token_hex(8)}"
    w.proxy_secrets.append(password)
    proxy = Tinyproxy(w.tmp.parent / "proxy", auth=(user, password))
    auth_file = w.tmp.parent / "proxy-auth.txt"
    auth_file.write_text(f"{user}:{password}\n", encoding="utf-8")
    try:
        srv.reset()
        srv.set_key(w.api_key)
        common = ["--base-url", srv.base_url, "--max-rps", "500", "-vv"]
        in_env = {"HTTP_PROXY": proxy.url_with(user, password)}
        for what, extra, env in [
                ("proxy env", [], in_env),
                ("proxy file", ["--proxy", proxy.url, "--proxy-auth-file", str(auth_file)], {})]:
            name = what.replace(" ", "-")
            p = cli(w, "run", inputs, *common, *extra, "--state",
                    str(w.tmp / name / "state.sqlite"), "--report", str(out / f"{name}.csv"),
                    "--events", str(out / f"{name}.events.jsonl"), what=what, extra_env=env)
            assert p.returncode == 1, p.stderr
        assert {r["peer"] for r in srv.requests()} == {PROXY_PEER}
        p = cli(w, "doctor", "--base-url", srv.base_url, "--json", "--state",
                str(w.tmp / "proxy-env" / "state.sqlite"), what="doctor", extra_env=in_env)
        assert p.returncode == 0, p.stdout
        # Refused credentials: doctor opens the tunnel itself, and the refusal names the proxy.
        p = cli(w, "doctor", "--base-url", srv.base_url, "--state",
                str(w.tmp / "proxy-env" / "state.sqlite"), what="doctor refused",
                extra_env={"HTTP_PROXY": proxy.url_with(user, password + "x")})
        assert p.returncode == 3 and b"refused the credentials" in p.stdout, p.stdout
    finally:
        proxy.stop()


def report_statuses(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        return [str(s) for s in pq.read_table(path).column("status").to_pylist()]
    if path.suffix == ".jsonl":
        return [json.loads(line)["status"] for line in path.read_text().splitlines() if line]
    with path.open(newline="", encoding="utf-8") as fh:
        return [r["status"] for r in csv.DictReader(fh)]


# --- the key's own hygiene (cli/secrets.py) ---------------------------------------------------


def test_the_key_is_dropped_from_the_environment_once_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No child process (a pager, a crash reporter) inherits the key."""
    monkeypatch.setenv(ENV_KEY, "  SECRETKEY-env-123  ")
    warnings: list[str] = []
    assert read_api_key(None, warnings.append) == "SECRETKEY-env-123"
    assert ENV_KEY not in os.environ
    child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.environ))"],
                           capture_output=True, text=True, timeout=30)
    assert ENV_KEY not in child.stdout
    assert warnings == []


def test_a_key_file_wins_and_the_environment_is_dropped_anyway(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_KEY, "SECRETKEY-from-env")
    key_file = tmp_path / "key"
    key_file.write_text("SECRETKEY-from-file\n", encoding="utf-8")
    assert read_api_key(key_file, lambda _m: None) == "SECRETKEY-from-file"
    assert ENV_KEY not in os.environ


def test_sslkeylogfile_is_ignored_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    monkeypatch.delenv(ENV_KEY, raising=False)
    warnings: list[str] = []
    assert read_api_key(None, warnings.append) is None
    assert "SSLKEYLOGFILE" not in os.environ
    assert len(warnings) == 1 and "SSLKEYLOGFILE" in warnings[0]
    assert str(keylog) not in warnings[0]


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_key_file_is_a_usage_error(tmp_path: Path, content: str) -> None:
    from batch_toggle.errors import UsageError

    key_file = tmp_path / "key"
    key_file.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match="empty"):
        read_api_key(key_file, lambda _m: None)
