"""Every example runs: each `--help` example, and every shell or Python block of README.md and
docs/*.md, against the sandbox on a real loopback socket.

How the examples are run, and why each liberty is taken:

* In a temporary copy of what the repository ships for them (`sample_data/`, `Makefile`,
  `pyproject.toml`, an empty `reports/`), with the installed virtualenv linked in as `.venv`
  (entry by entry, with a stamp of its own, so that `make install` finds it up to date and
  never reinstalls from the copy; `. .venv/bin/activate` works), never in the repository
  itself: an example's reports must not land in the working tree.
* HOME and the state store live in the temporary directory; `/tmp/` in a block is that
  directory's `tmp/` (four engineers run these tests on one machine at once: fixed paths in
  /tmp would collide).
* One sandbox server per document (and one for the help examples), on 127.0.0.1 with an
  ephemeral port: `127.0.0.1:8765` in a block is that server's address, and LOGIS_BASE_URL /
  LOGIS_API_KEY point every command that would talk to the real Logis at it. A block marked
  `<!-- example: server -->` is the guide's "leave the sandbox running in a second terminal":
  the test's server takes its place.
* BATCH_TOGGLE_MAX_RPS=1000: pacing is not what an example shows, and at the default 10 a
  second the guides would take many minutes (flags the blocks give still win). The library
  reads no BATCH_TOGGLE_ variable, so a Python block starts with `PACE`, which gives its
  `batch_toggle.run` and `audit` calls the same `max_rps=1000` (arguments the block gives still
  win): the README's and library.md's first examples took 28 s each at 10 a second.
* `batch-toggle` examples that serve (`batch-toggle sandbox ...`) are started on a free port,
  checked to answer, and stopped with Ctrl-C (SIGINT).

What counts as failing: a command that exits other than the block allows (a block's
`<!-- example: exit N -->` marker allows N; otherwise every command must exit 0; a help
example may exit 0 or 1, since the samples carry bad rows on purpose), or a traceback.
A block that is not meant to run says so right above it, with the reason:
`<!-- example: not run: REASON -->`; `<!-- example: file NAME -->` writes the block to NAME
(a script the guide has you save) instead of running it. Nothing else is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_toggle.cli.app import main

from . import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHIPPED = ["sample_data", "Makefile", "pyproject.toml"]
BLOCK_TIMEOUT = 240.0  # the longest guide takes about 40 s
VENV = Path(sys.prefix)
SHELLS = {"sh", "bash", "shell", "console"}
# Put before every Python block (see the module docstring): the library's own pace, as fast as
# BATCH_TOGGLE_MAX_RPS makes the CLI's. Call keywords override a partial's, so a block's own
# max_rps still wins.
PACE = ("import functools as _bt_ft, batch_toggle as _bt\n"
        "for _bt_name in ('run', 'audit'):\n"
        "    setattr(_bt, _bt_name, _bt_ft.partial(getattr(_bt, _bt_name), max_rps=1000))\n"
        "del _bt_ft, _bt, _bt_name\n")
FENCE = re.compile(r"^(\s*)```\s*([\w.+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*example:\s*(.*?)\s*-->$")
# Help examples that cannot run here, and why (the test fails if one disappears from --help).
HELP_NOT_RUN = {
    "15 * * * * cd /srv/optouts": "a crontab line: cron runs it in /srv/optouts with that "
                                  "directory's config file; docs/cron.md's slice runs the same "
                                  "command against the sandbox",
}


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str  # "" when none

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks_of(doc: Path) -> list[Block]:
    """The fenced blocks of a markdown file, each with the example marker right above it."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line
                         for line in lines[i + 1:end])
        above = lines[i - 1].strip() if i else ""
        marker = MARKER.match(above)
        out.append(Block(doc, i + 1, lang, body + "\n", marker.group(1) if marker else ""))
        i = end + 1
    return out


def indented_code(doc: Path) -> list[int]:
    """Lines that open an indented (unfenced) code block: such a block would escape the test,
    so the docs fence every block and name its language."""
    found, fenced, previous = [], False, ""
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
        elif (not fenced and line.startswith("    ") and not previous.strip()
              and not re.match(r"\s*([*-]|\d+\.)\s", line)):
            found.append(number)
        previous = line
    return found


def runnable(block: Block) -> bool:
    return block.lang in SHELLS or block.lang == "python"


# --- the environment ------------------------------------------------------------------------


@dataclass
class Place:
    cwd: Path
    tmp: Path
    env: dict[str, str]
    netloc: str

    def substitute(self, text: str) -> str:
        return text.replace("/tmp/", f"{self.tmp}/").replace("127.0.0.1:8765", self.netloc)


def make_place(root: Path, base_url: str, api_key: str) -> Place:
    if Path(sys.base_prefix) == VENV:
        pytest.skip("the examples run in the project's virtualenv (make test)")
    cwd, tmp, home = root / "repo", root / "tmp", root / "home"
    for path in (cwd, tmp, home):
        path.mkdir()
    for name in SHIPPED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, cwd / name, copy_function=shutil.copy2)
        else:
            shutil.copy2(source, cwd / name)  # keeps mtimes: make sees .venv up to date
    (cwd / "reports").mkdir()
    # The virtualenv, entry by entry, with a stamp of its own: `make install` (and `make demo`,
    # which depends on it) must find it up to date and never reinstall the package into the
    # real virtualenv from this temporary copy.
    (cwd / ".venv").mkdir()
    for entry in VENV.iterdir():
        if entry.name != ".installed":
            (cwd / ".venv" / entry.name).symlink_to(entry)
    os.utime(cwd / "pyproject.toml", (0, 0))
    (cwd / ".venv" / ".installed").touch()
    env = {
        "PATH": f"{VENV / 'bin'}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(tmp),
        "LANG": "C.UTF-8", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1",
        "LOGIS_BASE_URL": base_url, "LOGIS_API_KEY": api_key,
        "BATCH_TOGGLE_MAX_RPS": "1000", "BATCH_TOGGLE": str(VENV / "bin" / "batch-toggle"),
    }
    return Place(cwd, tmp, env, base_url.split("//", 1)[1])


# --- documents --------------------------------------------------------------------------------


def test_the_docs_fence_every_code_block_and_mark_those_that_do_not_run() -> None:
    problems = []
    for doc in DOCS:
        problems += [f"{doc.relative_to(REPO)}:{n}: an indented code block" for n in
                     indented_code(doc)]
        for block in blocks_of(doc):
            if not block.lang:
                problems.append(f"{block.name}: a block without a language")
            kind = block.marker.split(":", 1)[0].strip()
            if block.marker and kind not in ("not run", "server", "exit", "file") \
                    and not kind.startswith(("exit", "file")):
                problems.append(f"{block.name}: unknown marker {block.marker!r}")
            if kind == "not run" and not block.marker.split(":", 1)[1].strip():
                problems.append(f"{block.name}: `not run` without a reason")
    assert problems == []


def test_no_document_cites_a_file_the_repository_does_not_have() -> None:
    """Links, and the paths of repository files named in backquotes (docs/..., sample_data/...,
    batch_toggle/..., tests/...), must exist; nor may a document point outside it."""
    missing = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert "../shared" not in text and not re.search(r"SPEC section", text), doc
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target and not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(REPO)}: link {target}")
        for path in re.findall(r"`((?:docs|sample_data|batch_toggle|tests|benchmarks)/"
                               r"[\w./-]+\.\w+)`", text):
            if not (REPO / path).exists():
                missing.append(f"{doc.relative_to(REPO)}: {path}")
    assert missing == []


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_block_of_the_document_runs(doc: Path, tmp_path: Path,
                                          make_sandbox_server: Any) -> None:
    blocks = [b for b in blocks_of(doc) if runnable(b) or b.marker.startswith("file")]
    to_run = [b for b in blocks if not b.marker.startswith("not run")]
    # A server started in the foreground would hold the document's script until its timeout
    # (and leave a process on a fixed port behind): such a block must say how it is run.
    serving = [b.name for b in to_run if b.marker != "server" and not b.marker.startswith("file")
               and re.search(r"^\s*batch-toggle sandbox\b(?!.*--help)", b.text, re.M)]
    assert not serving, f"blocks that serve until Ctrl-C, unmarked: {serving}"
    if not to_run:
        pytest.skip(f"{doc.name} has no block to run")
    server = make_sandbox_server()
    place = make_place(tmp_path, server.base_url, server.api_key)
    fails = tmp_path / "fails.txt"
    script = [
        "set -E", f"__BT_FAILS={fails}",
        "trap 'echo \"$__bt_block $?\" >> \"$__BT_FAILS\"' ERR",
        f"cd {place.cwd}",
    ]
    allowed: dict[str, set[int]] = {}
    for block in to_run:
        if block.marker == "server":
            continue  # the test's own server stands in for it
        script.append(f"__bt_block={block.line}")
        text = place.substitute(block.text)
        if block.marker.startswith("file"):
            name = place.substitute(block.marker.split(None, 1)[1])
            script += [f"mkdir -p $(dirname {name})",
                       f"cat > {name} <<'__BT_FILE_EOF'", text.rstrip("\n"), "__BT_FILE_EOF",
                       f"chmod +x {name}"]
            continue
        if block.lang == "python":
            script += ["python - <<'__BT_PY_EOF'", PACE + text.rstrip("\n"), "__BT_PY_EOF"]
        else:
            script.append(text.rstrip("\n"))
        codes = re.findall(r"\d+", block.marker) if block.marker.startswith("exit") else []
        allowed[str(block.line)] = {int(c) for c in codes} or {0}
    proc = subprocess.run(["bash", "-c", "\n".join(script)], env=place.env, cwd=place.cwd,
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    failures = [line.split() for line in (fails.read_text().splitlines()
                                          if fails.exists() else [])]
    wrong = [f"{doc.name}:{line} exited {code}" for line, code in failures
             if int(code) not in allowed.get(line, {0})]
    assert not wrong, "\n".join(wrong) + "\n--- output ---\n" + output[-6000:]
    assert "Traceback" not in output, output[-6000:]
    # Run from the repository root, a guide leaves nothing there but under reports/ (which
    # git ignores): its own files go to a folder of its own.
    left = sorted(p.name for p in place.cwd.iterdir())
    assert left == sorted([*SHIPPED, "reports", ".venv"]), left
    for line, codes in allowed.items():  # a block allowed to fail must fail as it says
        if 0 not in codes:
            seen = {int(c) for ln, c in failures if ln == line}
            assert seen and seen <= codes, f"{doc.name}:{line} was to exit {codes}: {seen}"


# --- --help ---------------------------------------------------------------------------------


def help_examples() -> list[tuple[str, str]]:
    """(command, example) for each example command line of each command's --help."""
    found = []
    commands = {"": main, **main.all_commands()}
    for name, command in sorted(commands.items()):
        lines = (command.epilog or "").splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if not re.match(r"(batch-toggle |[A-Z_]+=\S+ |[\d*/,-]+ [\d*/,-]+ )", line):
                continue
            while line.endswith("\\") and i < len(lines):
                line = line[:-1].rstrip() + " " + lines[i].strip()
                i += 1
            found.append((name or "main", line))
    return found


EXAMPLES = help_examples()


def test_help_examples_are_found_and_the_ones_not_run_are_still_there() -> None:
    assert len(EXAMPLES) >= 15
    for prefix in HELP_NOT_RUN:
        assert any(example.startswith(prefix) for _, example in EXAMPLES), prefix


@pytest.fixture(scope="module")
def help_place(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("help")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command, example", EXAMPLES,
                         ids=[f"{c}-{i}" for i, (c, _) in enumerate(EXAMPLES)])
def test_every_help_example_runs(command: str, example: str, tmp_path: Path,
                                 sandbox_server: Any) -> None:
    reason = next((why for prefix, why in HELP_NOT_RUN.items() if example.startswith(prefix)),
                  None)
    if reason is not None:
        pytest.skip(f"not run: {reason}")
    place = make_place(tmp_path, sandbox_server.base_url, sandbox_server.api_key)
    text = place.substitute(example)
    if re.match(r"batch-toggle sandbox\b", text):
        _serve(text, place)
        return
    proc = subprocess.run(["bash", "-c", text], env=place.env, cwd=place.cwd,
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), f"{text}\nexit {proc.returncode}\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]


def _serve(text: str, place: Place) -> None:
    """A `batch-toggle sandbox` example: serve on a free port, answer, stop on Ctrl-C."""
    port = _free_port()
    proc = subprocess.Popen(["bash", "-c", f"exec {text} --port {port}"], env=place.env,
                            cwd=place.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=1.0)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the sandbox did not start"
                time.sleep(0.05)
        assert health.json()["ok"] is True
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
