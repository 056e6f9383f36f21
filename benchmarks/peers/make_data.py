"""The peer benchmark's inputs: a seed, the messy sample scaled up, a clean file, and the intent.

    .venv/bin/python benchmarks/peers/make_data.py [--blocks 10] [--out benchmarks/data]

The messy file is `sample_data/optouts_2026_11.csv`'s recipe (make_samples.py's own builder)
run once per block of 400 fresh jobs and 150 fresh clients: each block brings the same mess (300
rows: 269 clean units in real-world spellings, 12 duplicates, 3 conflicting states, a unit with
two review keys, an unknown job, a wrong review key, 9 invalid rows, a quoted newline, CRLF).
The clean file has as many rows, the same columns, one row per distinct unit, canonical values
(lower-case hyphenated UUIDs, `true`/`false`, `job`/`client`), LF endings.

The seed starts every unit the files ask about in the *opposite* state of the file's intent, so a
unit found in its desired state after a run was put there by that run (nothing counts as done
by luck). Deterministic: same --blocks, same bytes.

Writes seed.csv, messy.csv, clean.csv and intent.json: for every data row of each file, the
(job_id, update_target, desired do_notify_sms) its unit must end in, or null when the row has no
clear intent (invalid, unknown job, wrong review key, two review keys for one unit).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "benchmarks" / "data" / "peers"
RNG_SEED = 20261107
COLUMNS = ("Job ID", "Review Key", "SMS", "Target", "Client Name", "Phone", "Note")
SEED_COLUMNS = ("job_id", "review_key", "client_id", "do_notify_sms", "client_do_notify_sms")
CLEAN_CLIENT_SHARE = 0.1

Unit = tuple[str, str]  # (job_id, update_target)


def load_make_samples() -> ModuleType:
    """sample_data/make_samples.py as a module: its builder is the one source of the mess."""
    path = REPO / "sample_data" / "make_samples.py"
    spec = importlib.util.spec_from_file_location("make_samples", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def row_intent(kind: dict[str, Any], last_state: dict[Unit, str]) -> list[str] | None:
    """The unit and state a messy row wants, or None when the row has no clear intent."""
    if kind["kind"] in ("clean", "exact_duplicate", "respelled_duplicate"):
        unit = (kind["job_id"], kind["update_target"])
        return [*unit, kind["do_notify_sms"]]
    if kind["kind"] == "conflicting_state":
        # File order decides (batch-toggle's default --on-conflict last; a sequential script
        # gets the same by sending in order): the unit must end in the last row's state.
        unit = (kind["job_id"], "job")
        return [*unit, last_state[unit]]
    return None


def build_messy(ms: ModuleType, rng: random.Random, blocks: int) -> tuple[
        list[Any], list[dict[str, str]], list[list[str] | None]]:
    """Seed jobs, messy rows and their intents, block after block."""
    jobs: list[Any] = []
    rows: list[dict[str, str]] = []
    intents: list[list[str] | None] = []
    for _ in range(blocks):
        block_jobs = ms.make_seed(rng)
        pairs = ms.shuffled(rng, ms.build_optouts(rng, block_jobs))
        last_state: dict[Unit, str] = {}
        for _, kind in pairs:
            if kind["kind"] == "conflicting_state":
                last_state[(kind["job_id"], "job")] = kind["do_notify_sms"]
        jobs.extend(block_jobs)
        for row, kind in pairs:
            rows.append(row)
            intents.append(row_intent(kind, last_state))
    return jobs, rows, intents


def oppose(jobs: list[Any], intents: list[list[str] | None]) -> list[dict[str, str]]:
    """Seed rows where every intended unit starts in the opposite of its desired state."""
    job_state = {j.job_id: j.do_notify_sms for j in jobs}
    client_state = {j.client_id: j.client_do_notify_sms for j in jobs}
    client_of = {j.job_id: j.client_id for j in jobs}
    for intent in intents:
        if intent is None:
            continue
        job_id, target, desired = intent
        if target == "job":
            job_state[job_id] = desired != "true"
        else:
            client_state[client_of[job_id]] = desired != "true"
    return [
        {"job_id": j.job_id, "review_key": j.review_key, "client_id": j.client_id,
         "do_notify_sms": tf(job_state[j.job_id]),
         "client_do_notify_sms": tf(client_state[j.client_id])}
        for j in jobs
    ]


def tf(value: bool) -> str:
    return "true" if value else "false"


def build_clean(ms: ModuleType, rng: random.Random, seed_rows: list[dict[str, str]],
                n_rows: int) -> tuple[list[dict[str, str]], list[list[str] | None]]:
    """n_rows distinct units in canonical spelling, each asking for the opposite of its seed
    state (so every row needs a change); about 10% target the client (one row per client)."""
    pool = list(seed_rows)
    rng.shuffle(pool)
    rows, intents, clients = [], [], set()
    for seed in pool[:n_rows]:
        target = "job"
        if rng.random() < CLEAN_CLIENT_SHARE and seed["client_id"] not in clients:
            target = "client"
            clients.add(seed["client_id"])
        current = seed["do_notify_sms" if target == "job" else "client_do_notify_sms"]
        desired = "false" if current == "true" else "true"
        name = f"{rng.choice(ms.FIRST)} {rng.choice(ms.LAST)}"
        rows.append({"Job ID": seed["job_id"], "Review Key": seed["review_key"], "SMS": desired,
                     "Target": target, "Client Name": name,
                     "Phone": f"+1 514-555-{rng.randrange(100, 200):04d}", "Note": ""})
        intents.append([seed["job_id"], target, desired])
    if len(rows) < n_rows:
        raise SystemExit(f"the seed has {len(pool)} jobs: too few for a {n_rows}-row clean file")
    return rows, intents


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]],
              lineterminator: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator=lineterminator)
        writer.writeheader()
        writer.writerows(rows)


def generate(out: Path, blocks: int) -> dict[str, Any]:
    """Write the four files under `out`; return a summary (also saved in intent.json)."""
    ms = load_make_samples()
    rng = random.Random(RNG_SEED)
    jobs, messy_rows, messy_intents = build_messy(ms, rng, blocks)
    seed_rows = oppose(jobs, messy_intents)
    clean_rows, clean_intents = build_clean(ms, rng, seed_rows, len(messy_rows))
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "seed.csv", SEED_COLUMNS, seed_rows, "\n")
    # Excel on Windows writes CRLF, as the shipped sample does; the clean file is plain LF.
    write_csv(out / "messy.csv", COLUMNS, messy_rows, "\r\n")
    write_csv(out / "clean.csv", COLUMNS, clean_rows, "\n")
    summary = {
        "blocks": blocks, "seed_jobs": len(seed_rows),
        "messy": {"rows": len(messy_rows), "intents": messy_intents},
        "clean": {"rows": len(clean_rows), "intents": clean_intents},
    }
    (out / "intent.json").write_text(json.dumps(summary), encoding="utf-8")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10, help="300 messy rows per block")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    s = generate(args.out, args.blocks)
    print(f"wrote {s['seed_jobs']} seed jobs, {s['messy']['rows']} messy and "
          f"{s['clean']['rows']} clean rows to {args.out}")


if __name__ == "__main__":
    main()
