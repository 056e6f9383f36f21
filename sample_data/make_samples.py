"""Write the shipped sample files, deterministically (seeded random): run from anywhere.

    .venv/bin/python sample_data/make_samples.py

Writes, beside this script:
  sandbox_seed.csv             the sandbox's world: 400 jobs over 150 clients (the only "seed");
                               also copied, byte for byte, to batch_toggle/sandbox/, the copy
                               the package ships and every --sandbox uses
  optouts_2026_11.csv          a messy monthly opt-out list, as operators really get them
  optouts_2026_11.parquet      the same rows, every column a string
  optouts_2026_11.expected.json  what each planted row is and what `run` should make of it
  optins_migration.csv         a clean 50-row export from another system (job,review_key,...)
  migration_export.csv         the same export under the old system's column names, plus one
                               row re-subscribing a client the opt-out list opts out
  migration_export.xlsx        the same as a workbook: sheet "Export", then sheet "About"
README.md (written by hand) says what is planted where.
"""

from __future__ import annotations

import csv
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The seed the package ships (sample_data/ is not in the wheel): the default world of
# `batch-toggle sandbox`, `run --sandbox` and `audit --sandbox`. tests/test_packaged_seed.py
# checks it is byte-identical to sample_data/sandbox_seed.csv.
PACKAGED_SEED = HERE.parent / "batch_toggle" / "sandbox" / "sandbox_seed.csv"
RNG_SEED = 20261101
N_JOBS = 400
N_CLIENTS = 150
OPTOUT_COLUMNS = ("Job ID", "Review Key", "SMS", "Target", "Client Name", "Phone", "Note")

FIRST = ("Émilie", "François", "Chloé", "Jérôme", "Anaïs", "Marc-André", "Sophie", "Luc",
         "Geneviève", "Olivier", "Zoë", "Mathieu", "Hélène", "Noah", "Amélie", "William",
         "Priya", "Wei", "Fatima", "José")
LAST = ("Tremblay", "Gagnon", "Côté", "Bouchard", "Lévesque", "Roy", "Gauthier", "Morin",
        "O'Brien", "Nguyen", "Singh", "Pelletier", "Bélanger", "Ouellet", "Chen", "Smith")
NOTES = ("", "", "", "", "", "replied STOP", "called 2026-11-03", "asked by phone",
         "via web form", "STOP reply to reminder", "customer request", "left voicemail")

FALSE_SPELLINGS = ("no", "No", "NO", "false", " false ", "FALSE", "0", "n", "off", "opt-out",
                   "OPT-OUT", "optout", "unsubscribe", "Unsubscribe", "f", "N")
TRUE_SPELLINGS = ("yes", "Yes", "true", "1", "Y", "on", "opt-in", "subscribe", "T", "TRUE")
JOB_SPELLINGS = ("job", "Job", "JOB", " job")
CLIENT_SPELLINGS = ("client", " client ", "Client", "CLIENT")


@dataclass(frozen=True)
class SeedJob:
    job_id: str
    review_key: str
    client_id: str
    do_notify_sms: bool
    client_do_notify_sms: bool


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def messy_uuid(rng: random.Random, value: str) -> str:
    """The same UUID as spreadsheets and other systems spell it."""
    u = uuid.UUID(value)
    return rng.choices(
        [value, value.upper(), "{" + value + "}", "urn:uuid:" + value, u.hex, u.hex.upper(),
         "  " + value + " "],
        weights=[50, 14, 9, 7, 8, 4, 8],
    )[0]


def tf(value: bool) -> str:
    return "true" if value else "false"


def make_seed(rng: random.Random) -> list[SeedJob]:
    clients = [(new_uuid(rng), rng.random() < 0.8) for _ in range(N_CLIENTS)]
    jobs = []
    for i in range(N_JOBS):
        cid, cdefault = clients[i] if i < N_CLIENTS else rng.choice(clients)
        jobs.append(SeedJob(new_uuid(rng), new_uuid(rng), cid, rng.random() < 0.75, cdefault))
    rng.shuffle(jobs)
    return jobs


class OptoutBuilder:
    """Builds the messy opt-out rows and remembers what each planted row is."""

    def __init__(self, rng: random.Random, jobs: list[SeedJob]) -> None:
        self.rng = rng
        self.unused = list(jobs)
        self.rows: list[dict[str, str]] = []
        self.kinds: list[dict[str, Any]] = []  # parallel to rows: what the row is
        self.client_targets: set[str] = set()

    def take_job(self) -> SeedJob:
        return self.unused.pop()

    def person(self) -> tuple[str, str]:
        name = f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}"
        phone = self.rng.choice(("+1 514-555-{:04d}", "(438) 555-{:04d}", "450.555.{:04d}"))
        return name, phone.format(self.rng.randrange(100, 200))

    def row(self, job_id: str, review_key: str, sms: str, target: str, kind: dict[str, Any],
            note: str | None = None) -> dict[str, str]:
        name, phone = self.person()
        row = {"Job ID": job_id, "Review Key": review_key, "SMS": sms, "Target": target,
               "Client Name": name, "Phone": phone,
               "Note": self.rng.choice(NOTES) if note is None else note}
        self.rows.append(row)
        self.kinds.append(kind)
        return row

    def clean(self, job: SeedJob, target: str, state: bool) -> dict[str, str]:
        spellings = TRUE_SPELLINGS if state else FALSE_SPELLINGS
        target_text = self.rng.choice(JOB_SPELLINGS if target == "job" else CLIENT_SPELLINGS)
        current = job.do_notify_sms if target == "job" else job.client_do_notify_sms
        kind = {"kind": "clean", "job_id": job.job_id, "update_target": target,
                "do_notify_sms": tf(state), "in_sync_at_seed": current == state}
        return self.row(messy_uuid(self.rng, job.job_id), messy_uuid(self.rng, job.review_key),
                        self.rng.choice(spellings), target_text, kind)


def build_optouts(rng: random.Random, jobs: list[SeedJob]) -> OptoutBuilder:
    b = OptoutBuilder(rng, jobs)
    clean_rows: list[int] = []
    # 266 clean units: mostly opt-outs, some opt-ins, ~15% client defaults (one per client).
    while len(clean_rows) < 266:
        job = b.take_job()
        target = "job"
        if rng.random() < 0.15 and job.client_id not in b.client_targets:
            target = "client"
            b.client_targets.add(job.client_id)
        b.clean(job, target, rng.random() >= 0.8)
        clean_rows.append(len(b.rows) - 1)
    # 3 jobs whose client default changes too: a second unit, same job, target client.
    both = 0
    for i in clean_rows:
        job = next(j for j in jobs if j.job_id == b.kinds[i]["job_id"])
        if b.kinds[i]["update_target"] == "job" and job.client_id not in b.client_targets:
            b.client_targets.add(job.client_id)
            b.clean(job, "client", False)
            both += 1
            if both == 3:
                break
    # A formula-injection probe and a note with a newline in it, on clean rows.
    b.rows[clean_rows[10]]["Note"] = '=HYPERLINK("http://example.com/x","click me")'
    b.rows[clean_rows[11]]["Note"] = "+1 called back"
    b.rows[clean_rows[12]]["Note"] = "left voicemail\nthen replied STOP"
    # 8 exact duplicate rows and 4 duplicates spelled differently (same unit, state and key).
    for i in rng.sample(clean_rows[20:], 8):
        b.rows.append(dict(b.rows[i]))
        b.kinds.append({**b.kinds[i], "kind": "exact_duplicate"})
    for i in rng.sample(clean_rows[40:], 4):
        k = b.kinds[i]
        job = next(j for j in jobs if j.job_id == k["job_id"])
        state = k["do_notify_sms"] == "true"
        spellings = TRUE_SPELLINGS if state else FALSE_SPELLINGS
        targets = JOB_SPELLINGS if k["update_target"] == "job" else CLIENT_SPELLINGS
        b.row(job.job_id.upper(), "{" + job.review_key + "}", rng.choice(spellings),
              rng.choice(targets), {**k, "kind": "respelled_duplicate"})
    # 3 units with conflicting states: same key, opposite answers (file order: first, last).
    for first, last in (("no", "yes"), ("unsubscribe", "subscribe"), ("1", "0")):
        job = b.take_job()
        for sms, role in ((first, "first"), (last, "last")):
            b.row(job.job_id, job.review_key, sms, "job",
                  {"kind": "conflicting_state", "role": role, "job_id": job.job_id,
                   "update_target": "job", "do_notify_sms": tf(sms in TRUE_SPELLINGS)})
    # 1 unit named with two different review keys: nothing may be sent for it.
    job = b.take_job()
    for key in (job.review_key, new_uuid(rng)):
        b.row(job.job_id, key, "no", "job",
              {"kind": "conflicting_review_key", "job_id": job.job_id, "update_target": "job"})
    # 1 unknown job (404) and 1 wrong review key (401 incorrect).
    b.row(new_uuid(rng), new_uuid(rng), "no", "job", {"kind": "unknown_job"})
    job = b.take_job()
    b.row(job.job_id, new_uuid(rng), "no", "job",
          {"kind": "wrong_review_key", "job_id": job.job_id})
    # 9 invalid rows, one error each.
    invalid = (
        ("invalid_job_id", lambda j: ("12345", j.review_key, "no", "job")),
        # Full-width digits: uuid.UUID would take them, the spec does not.
        ("invalid_job_id",
         lambda j: (j.job_id.replace("1", "１", 1) if "1" in j.job_id else "１" + j.job_id[1:],
                    j.review_key, "no", "job")),
        ("missing_job_id", lambda j: ("", j.review_key, "no", "job")),
        ("missing_review_key", lambda j: (j.job_id, "", "no", "job")),
        ("invalid_review_key", lambda j: (j.job_id, "abc-def", "no", "job")),
        ("invalid_do_notify_sms", lambda j: (j.job_id, j.review_key, "maybe", "job")),
        ("missing_do_notify_sms", lambda j: (j.job_id, j.review_key, "", "job")),
        ("invalid_update_target", lambda j: (j.job_id, j.review_key, "no", "all")),
        ("missing_update_target", lambda j: (j.job_id, j.review_key, "no", "")),
    )
    for code, make in invalid:
        b.row(*make(b.take_job()), {"kind": "invalid", "error_code": code})
    return b


def shuffled(rng: random.Random, b: OptoutBuilder) -> list[tuple[dict[str, str], dict]]:
    pairs = list(zip(b.rows, b.kinds, strict=True))
    rng.shuffle(pairs)
    # Conflicting rows keep their planted order (first before last) whatever the shuffle did.
    for job_id in {k["job_id"] for _, k in pairs if k["kind"] == "conflicting_state"}:
        idx = [i for i, (_, k) in enumerate(pairs) if k.get("job_id") == job_id]
        roles = [pairs[i] for i in idx]
        roles.sort(key=lambda p: p[1]["role"] != "first")
        for i, p in zip(idx, roles, strict=True):
            pairs[i] = p
    # An exact duplicate or a respelling must come after the row it repeats.
    originals: dict[tuple[str, str], int] = {}
    for i, (_, k) in enumerate(pairs):
        if k["kind"] == "clean":
            originals[(k["job_id"], k["update_target"])] = i
    for i, (_, k) in enumerate(pairs):
        if k["kind"] in ("exact_duplicate", "respelled_duplicate"):
            j = originals[(k["job_id"], k["update_target"])]
            if j > i:
                pairs[i], pairs[j] = pairs[j], pairs[i]
                originals[(k["job_id"], k["update_target"])] = i
    return pairs


def expected(pairs: list[tuple[dict[str, str], dict]]) -> dict[str, Any]:
    """Per data row (1-based): what it is, and its status after `run` on a fresh sandbox
    with the default options (--on-conflict last, empty state store)."""
    first_of: dict[tuple[str, str], int] = {}
    rows = []
    for n, (_, k) in enumerate(pairs, start=1):
        kind = k["kind"]
        entry: dict[str, Any] = {"row": n, "kind": kind}
        if kind == "clean":
            first_of[(k["job_id"], k["update_target"])] = n
            entry.update(status="updated", in_sync_at_seed=k["in_sync_at_seed"])
        elif kind in ("exact_duplicate", "respelled_duplicate"):
            entry.update(status="duplicate",
                         duplicate_of_row=first_of[(k["job_id"], k["update_target"])])
        elif kind == "conflicting_state":
            entry.update(status="superseded" if k["role"] == "first" else "updated",
                         do_notify_sms=k["do_notify_sms"])
        elif kind == "conflicting_review_key":
            entry.update(status="conflict", error_code="conflicting_review_key")
        elif kind == "unknown_job":
            entry.update(status="failed", error_code="job_not_found", http_status=404)
        elif kind == "wrong_review_key":
            entry.update(status="failed", error_code="incorrect_review_key", http_status=401)
        else:
            entry.update(status="invalid", error_code=k["error_code"])
        if "job_id" in k:
            entry.update(job_id=k["job_id"], update_target=k.get("update_target", "job"))
        rows.append(entry)
    return {
        "file": "optouts_2026_11.csv (and .parquet: same rows)",
        "run_with": "batch-toggle run ... --on-conflict last, fresh sandbox, empty state store",
        "status_counts": dict(Counter(r["status"] for r in rows)),
        "error_code_counts": dict(Counter(r["error_code"] for r in rows if "error_code" in r)),
        "requests_needed": sum(
            1 for r in rows if r["status"] in ("updated",) or r.get("http_status")
        ),
        "rows": rows,
    }


def dumps(doc: dict[str, Any]) -> str:
    """JSON with one row per line: readable, and diffs stay small."""
    head = {k: v for k, v in doc.items() if k != "rows"}
    lines = json.dumps(head, indent=1, ensure_ascii=False)[:-2] + ',\n "rows": [\n'
    lines += ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in doc["rows"])
    return lines + "\n ]\n}\n"


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]],
              lineterminator: str = "\n") -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator=lineterminator)
        writer.writeheader()
        writer.writerows(rows)


def write_parquet(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in columns})
    pq.write_table(table, path, compression="zstd")


def make_optins(rng: random.Random, unused: list[SeedJob]) -> list[dict[str, str]]:
    rows, clients = [], set()
    for job in unused[:60]:
        scope = "job"
        if len(clients) < 10 and rng.random() < 0.25 and job.client_id not in clients:
            scope = "client"
            clients.add(job.client_id)
        rows.append({"job": job.job_id, "review_key": job.review_key,
                     "opt_in": tf(rng.random() < 0.7), "scope": scope})
        if len(rows) == 50:
            break
    return rows


EXPORT_COLUMNS = ("Job Ref", "Tracking Key", "Wants SMS", "Level")
# A client the opt-out list opts out (row 3 of optouts_2026_11.csv), whom the old system still
# has opted in: the migration guide's blocked resubscribe.
RESUBSCRIBE = {"Job Ref": "da1d515f451f4c71a79a74b2da87b611",
               "Tracking Key": "a0d92088-01a8-4d0d-bdf9-57e8e15771ee", "Wants SMS": "yes",
               "Level": "job"}


def migration_export(optins: list[dict[str, str]]) -> list[dict[str, str]]:
    """The opt-in export under the old system's column names, plus the resubscribe row."""
    rows = [{"Job Ref": r["job"], "Tracking Key": r["review_key"], "Wants SMS": r["opt_in"],
             "Level": r["scope"]} for r in optins]
    return [*rows, RESUBSCRIBE]


def write_xlsx(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    """A workbook of two sheets, "Export" (the rows) and "About"; the same bytes every time
    (fixed document times, fixed times inside the zip)."""
    import io
    import zipfile
    from datetime import datetime

    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Export"
    sheet.append(list(columns))
    for row in rows:
        sheet.append([row[c] for c in columns])
    about = book.create_sheet("About")
    about.append(["Exported from the old notification system, 2026-11-01"])
    book.properties.created = book.properties.modified = datetime(2026, 11, 1)
    raw = io.BytesIO()
    book.save(raw)
    out = io.BytesIO()
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in sorted(src.infolist(), key=lambda i: i.filename):
            info = zipfile.ZipInfo(item.filename, date_time=(2026, 11, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, src.read(item.filename))
    path.write_bytes(out.getvalue())


def main() -> None:
    rng = random.Random(RNG_SEED)
    jobs = make_seed(rng)
    write_csv(
        HERE / "sandbox_seed.csv",
        ("job_id", "review_key", "client_id", "do_notify_sms", "client_do_notify_sms"),
        [{"job_id": j.job_id, "review_key": j.review_key, "client_id": j.client_id,
          "do_notify_sms": tf(j.do_notify_sms),
          "client_do_notify_sms": tf(j.client_do_notify_sms)} for j in jobs],
    )
    PACKAGED_SEED.write_bytes((HERE / "sandbox_seed.csv").read_bytes())
    builder = build_optouts(rng, jobs)
    pairs = shuffled(rng, builder)
    rows = [r for r, _ in pairs]
    # Excel on Windows writes CRLF: so does this file, quoted newline in a Note included.
    write_csv(HERE / "optouts_2026_11.csv", OPTOUT_COLUMNS, rows, lineterminator="\r\n")
    write_parquet(HERE / "optouts_2026_11.parquet", OPTOUT_COLUMNS, rows)
    (HERE / "optouts_2026_11.expected.json").write_text(dumps(expected(pairs)), encoding="utf-8")
    optins = make_optins(rng, builder.unused)
    write_csv(HERE / "optins_migration.csv", ("job", "review_key", "opt_in", "scope"), optins)
    export = migration_export(optins)
    write_csv(HERE / "migration_export.csv", EXPORT_COLUMNS, export)
    write_xlsx(HERE / "migration_export.xlsx", EXPORT_COLUMNS, export)
    print(f"wrote {len(jobs)} seed jobs, {len(rows)} opt-out rows, 50 opt-in rows to {HERE} "
          f"(and the seed to {PACKAGED_SEED})")


if __name__ == "__main__":
    main()
