"""The obvious hand-written tool: read the CSV, one PUT per row, print each row's HTTP status.

    LOGIS_API_KEY=... python naive_script.py INPUT.csv BASE_URL > log.txt

What a careful person writes in a quarter of an hour (the peer benchmark's second contestant):
it tidies the common spellings (trims cells; yes/no, y/n, 1/0, true/false in any case; UUIDs
lower-cased, braces dropped; the target lower-cased), and otherwise sends every row as it is:
no validation, no dedupe, sequential on one keep-alive httpx client, nothing stops it, a 429 is
printed and the row is not retried. What it keeps of the run is its stdout: `<data row> <HTTP
status>` per row (`ERR` on a transport error), flushed line by line.
"""

import csv
import os
import sys

import httpx

PATH = "/api/apikeys/toggle_sms_notifications"
STATES = {"true": "true", "yes": "true", "y": "true", "1": "true",
          "false": "false", "no": "false", "n": "false", "0": "false"}


def tidy_uuid(text: str) -> str:
    return text.strip().strip("{}").lower()


def main() -> None:
    input_path, base_url = sys.argv[1], sys.argv[2]
    headers = {"LOGIS-API-KEY": os.environ["LOGIS_API_KEY"]}
    with open(input_path, newline="", encoding="utf-8") as fh, \
            httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        for n, row in enumerate(csv.DictReader(fh), start=1):
            sms = row["SMS"].strip().lower()
            body = {"job_id": tidy_uuid(row["Job ID"]),
                    "review_key": tidy_uuid(row["Review Key"]),
                    "do_notify_sms": STATES.get(sms, sms),
                    "update_target": row["Target"].strip().lower()}
            try:
                status = str(client.put(PATH, json=body).status_code)
            except httpx.HTTPError:
                status = "ERR"
            print(n, status, flush=True)


if __name__ == "__main__":
    main()
