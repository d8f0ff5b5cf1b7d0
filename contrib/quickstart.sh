#!/usr/bin/env bash
# Serve HTTPS on 127.0.0.1:$PORT (default 8443) with a fresh self-signed certificate and the
# built-in responder. Runs in the foreground; Ctrl-C or SIGTERM stops it and removes the
# temporary folder.
set -euo pipefail
PORT="${PORT:-8443}"
cd "$(dirname "$0")/.."
cargo build --release --quiet
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/server.key" -out "$dir/server.crt" 2>/dev/null
cat >"$dir/app.toml" <<TOML
processes = 2
https = ["127.0.0.1:$PORT,server.crt,server.key"]
TOML
echo "serving https://127.0.0.1:$PORT/ (try: curl -k https://127.0.0.1:$PORT/); Ctrl-C stops" >&2
target/release/uwsgi-master --config "$dir/app.toml" &
master=$!
trap 'kill -TERM "$master" 2>/dev/null || true; wait "$master" || true; rm -rf "$dir"; exit 0' INT TERM
wait "$master"
