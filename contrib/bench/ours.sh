#!/usr/bin/env bash
# uwsgi-master for ../shared/bench/run.sh:
#   run.sh --ours 'contrib/bench/ours.sh {PORT} {CERT} {KEY} {BACKEND} {WORKERS}'
# The configuration comes on stdin (no temporary file); `exec` keeps the process tree the
# harness measures to the master and its workers.
set -euo pipefail
port=$1 cert=$2 key=$3 backend=$4 workers=$5
here=$(cd "$(dirname "$0")/../.." && pwd)
exec "$here/target/release/uwsgi-master" --config /dev/stdin <<TOML
processes = $workers
https = ["127.0.0.1:$port,$cert,$key"]
http-to = "$backend"
log-level = "warn"
TOML
