#!/bin/sh
# The shell peer: `xargs -P 8 curl`, one curl per data row, 8 at a time.
#
#   LOGIS_API_KEY=... sh curl_xargs.sh INPUT.csv BASE_URL > log.txt
#
# What a person types: drop the header and the CRs, cut the first four columns (job, review
# key, state, target) on commas, and fire one PUT per line with the cells as they are. Each
# curl prints `<line> <HTTP status>` (000 when it got no reply); lines come out in completion
# order. No CSV parser: a quoted newline in a later column splits that row in two, as it
# does for anyone who cuts CSV on commas.
set -eu
input=$1
url=$2/api/apikeys/toggle_sms_notifications
export url
tail -n +2 "$input" | tr -d '\r' | cut -d, -f1-4 | awk '{ print NR "," $0 }' |
  xargs -d '\n' -P 8 -n 1 sh -c '
    IFS=,
    set -- $1
    curl -s -o /dev/null -w "$1 %{http_code}\n" -X PUT "$url" \
      -H "LOGIS-API-KEY: $LOGIS_API_KEY" -H "Content-Type: application/json" \
      --data "{\"job_id\": \"$2\", \"review_key\": \"$3\", \"do_notify_sms\": \"$4\", \"update_target\": \"$5\"}"
  ' sh
