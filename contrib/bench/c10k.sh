#!/usr/bin/env bash
# c10k.sh: 10,000 concurrent keep-alive TLS connections against nginx and uwsgi-master in one
# run (issue 7, acceptance items 2 and 3). Run it by hand, as root, on an otherwise idle box:
#
#   contrib/bench/c10k.sh                       # nginx then ours, wrk -t1 -c10000 -d60s
#   CONNS=2000 DURATION=20 SYSTEMS="ours" contrib/bench/c10k.sh
#
# Why not ../shared/bench/run.sh --conns 10000: its nginx template has `worker_connections
# 4096` (nginx drops/reuses connections past that: every wrk handshake fails once), and each
# of its wrk runs (2 s warm-up included) must complete a request, while one wrk thread needs
# several seconds just to open 10,000 TLS connections: the nginx row fails with "wrk completed no
# requests" (110,000 failed handshakes in a 20 s warm-up). Figures and findings: c10k.md here.
#
# What it does, per system (same backend, same certificate, same client):
#   - the bench backend (uwsgi protocol on a unix socket) and the server pinned to CPU 0
#     (SERVER_CPU), wrk pinned to CPU 1 (CLIENT_CPU), `ulimit -n` raised to NOFILE;
#   - nginx like the bench harness's (ssl + uwsgi_pass, TLSv1.2+1.3, access_log off,
#     keepalive_requests 1000000) with worker_processes 1, worker_connections 2*CONNS+100,
#     worker_rlimit_nofile, keepalive_timeout KEEPALIVE s; ours with processes = 1,
#     threads = THREADS, http-keepalive = KEEPALIVE;
#   - a functional check (curl, exact body), idle RSS (VmRSS summed over the server's
#     process tree), then `wrk -t1 -cCONNS -dDURATIONs --timeout WRK_TIMEOUT` while sampling
#     every 0.5 s the tree's RSS and open fds (peak), CPU of server, backend and wrk;
#   - wrk's result (requests/s, socket errors connect/read/write/timeout, non-2xx) and, with
#     ../shared/bench's fullhs.so shim, how often wrk had to reconnect.
# Before each load run it waits (up to WAIT_IDLE s) until other processes use < 10 % of the
# machine; a row whose run still overlapped other load (other > 10 % of a core) is marked ⚠.
# Our binary is copied into the run dir first, so a concurrent `cargo build` cannot swap it.
# Every load run holds the shared lock BENCH_LOCK (/tmp/bench.lock; do not wrap this script in
# `flock` on that same file: it would wait for itself). Everything started is stopped by PID.
# Output: a markdown table on stdout; logs, configs and raw wrk output stay in the run dir.
set -euo pipefail

CONNS=${CONNS:-10000}
DURATION=${DURATION:-60}
THREADS=${THREADS:-64}
KEEPALIVE=${KEEPALIVE:-120}
WRK_TIMEOUT=${WRK_TIMEOUT:-5s}
SYSTEMS=${SYSTEMS:-"nginx ours"}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
NOFILE=${NOFILE:-100000}
BENCH_LOCK=${BENCH_LOCK-/tmp/bench.lock}
WAIT_IDLE=${WAIT_IDLE:-300}
# nginx: one connection per client plus one per request in flight to the backend. nginx touches
# its whole connection array at start, so this also sets its idle RSS (~0.4 KiB per slot).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OURS_BIN=${OURS_BIN:-$here/target/release/uwsgi-master}
SHARED_BENCH=${SHARED_BENCH:-$(cd "$here/.." && pwd)/shared/bench}
BACKEND_BIN=${BACKEND_BIN:-/tmp/bench/build/bench-backend}
FULLHS=${FULLHS:-/tmp/bench/build/fullhs.so}

die() { echo "c10k: $*" >&2; exit 1; }
log() { echo "[c10k $(date +%H:%M:%S)] $*" >&2; }

for t in wrk nginx openssl taskset curl python3 flock; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
[[ -x $OURS_BIN ]] || die "$OURS_BIN missing (cargo build --release)"
(( $(nproc) >= 2 )) || die "needs 2 CPUs"

# fds, per process: CONNS client sockets in wrk; CONNS accepted + backend sockets in the server.
# Raising the hard limit needs CAP_SYS_RESOURCE (not granted in every container): else use it.
ulimit -Hn "$NOFILE" 2>/dev/null || true
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
NGINX_WORKER_CONNECTIONS=${NGINX_WORKER_CONNECTIONS:-$(( 2 * CONNS + 100 < NOFILE ? 2 * CONNS + 100 : NOFILE ))}
(( NOFILE >= CONNS + 1000 )) || die "ulimit -n is $NOFILE; need >= $((CONNS + 1000)) (raise the hard limit)"

run=$(mktemp -d /tmp/c10k.XXXXXX)
chmod 755 "$run"  # nginx's workers run as nobody and must reach the backend socket
log "run dir $run (ulimit -n $(ulimit -n))"
pids=()
cleanup() {
    local p
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        p=${pids[i]}
        kill -TERM "$p" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -f "$run"/*.key "$run"/*.sock
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# the backend: the bench instrument's (build it from its source when the harness has not)
if [[ ! -x $BACKEND_BIN ]]; then
    [[ -f $SHARED_BENCH/backend.c ]] || die "no $BACKEND_BIN and no $SHARED_BENCH/backend.c"
    gcc -O2 -o "$run/bench-backend" "$SHARED_BENCH/backend.c" || die "building backend.c failed"
    BACKEND_BIN=$run/bench-backend
fi
[[ -f $FULLHS ]] || { log "no $FULLHS: reconnects will not be counted"; FULLHS=; }

# a snapshot of our binary (the tree may be rebuilt meanwhile) and what it is
cp "$OURS_BIN" "$run/uwsgi-master"
ours_id="$(basename "$OURS_BIN") $(date -r "$OURS_BIN" '+%F %T') sha256 $(sha256sum "$OURS_BIN" | cut -c1-12)"
if head=$(git -C "$here" rev-parse --short HEAD 2>/dev/null); then
    [[ -z $(git -C "$here" status --porcelain --untracked-files=no 2>/dev/null) ]] || head="$head+uncommitted changes"
    ours_id="$ours_id, tree at $head (the binary may be older than the tree)"
fi
OURS_BIN=$run/uwsgi-master

# ECDSA P-256 certificate for 127.0.0.1 / localhost
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$run/ecdsa.key" -out "$run/ecdsa.crt" 2>"$run/openssl.log" || die "openssl req failed"

free_port() {
    python3 - <<'EOF'
import random, socket
for _ in range(200):
    p = random.randint(21000, 32000)   # below the ephemeral range wrk's sockets use
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()
else:
    raise SystemExit("no free port")
EOF
}

wait_port() { # pid port
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || return 1
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.2).close()" "$2" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# a python helper: tree RSS / fds, and the sampler (runs on the client CPU, like the harness)
cat >"$run/proc.py" <<'EOF'
import os, sys, time, json
HZ = os.sysconf("SC_CLK_TCK")
def stat(p):
    with open(f"/proc/{p}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()
def tree(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                kids.setdefault(int(stat(d)[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        try:
            if stat(p)[0] in "ZX":
                continue
        except OSError:
            continue
        out.append(p)
        todo += kids.get(p, [])
    return out
def rss(pids):
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for l in f:
                    if l.startswith("VmRSS:"):
                        t += int(l.split()[1]); break
        except OSError:
            pass
    return t
def fds(pids):
    t = 0
    for p in pids:
        try:
            t += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return t
def ticks(pids):
    t = 0
    for p in pids:
        try:
            s = stat(p); t += int(s[11]) + int(s[12])  # utime + stime (threads included)
        except (OSError, IndexError, ValueError):
            pass
    return t
def busy():  # (busy ticks, all ticks) of the whole machine
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)
cmd = sys.argv[1]
if cmd == "idle":           # idle MAXPCT TIMEOUT: wait until the machine is busy < MAXPCT % of one core
    limit, t_end = float(sys.argv[2]), time.time() + float(sys.argv[3])
    while True:
        b0 = busy(); time.sleep(1); b1 = busy()
        pct = 100.0 * os.cpu_count() * (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
        if pct < limit:
            break
        if time.time() > t_end:
            print(f"machine still busy ({pct:.0f}% of a core) after {sys.argv[3]} s; measuring anyway", file=sys.stderr)
            break
        time.sleep(2)
elif cmd == "rss":            # rss ROOTPID -> KiB summed over the tree
    print(rss(tree(int(sys.argv[2]))))
elif cmd == "sample":       # sample SERVERPID BACKENDPID STOPFILE OUT
    srv, be, stop, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    t0, s0, b0, m0 = time.time(), ticks(tree(srv)), ticks(tree(be)), busy()
    peak_rss = peak_fds = 0
    series = []
    while not os.path.exists(stop):
        pids = tree(srv)
        r, n = rss(pids), fds(pids)
        peak_rss, peak_fds = max(peak_rss, r), max(peak_fds, n)
        series.append((round(time.time() - t0, 1), r, n))
        time.sleep(0.5)
    wall = time.time() - t0
    m1 = busy()
    json.dump({"peak_rss_kib": peak_rss, "peak_fds": peak_fds, "wall_s": wall,
               "srv_cpu": 100.0 * (ticks(tree(srv)) - s0) / HZ / wall,
               "be_cpu": 100.0 * (ticks(tree(be)) - b0) / HZ / wall,
               "machine_cpu": 100.0 * os.cpu_count() * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
               "series": series}, open(out, "w"))
EOF

cat >"$run/report.lua" <<'EOF'
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "WRKJSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, \"max_us\": %d, " ..
      "\"connect\": %d, \"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d}\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

start_server() { # name port sock -> sets srv_pid
    local name=$1 port=$2 sock=$3
    case $name in
    nginx)
        local nd=$run/nginx
        mkdir -p "$nd"/tmp/{body,proxy,fastcgi,uwsgi,scgi}
        cat >"$nd/nginx.conf" <<NGINX
# like ../shared/bench/conf/nginx.conf.in, sized for $CONNS keep-alive connections
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
master_process on;
pid $nd/nginx.pid;
error_log $nd/error.log warn;
events {
    worker_connections $NGINX_WORKER_CONNECTIONS;
}
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout ${KEEPALIVE}s;
    client_body_temp_path $nd/tmp/body;
    proxy_temp_path $nd/tmp/proxy;
    fastcgi_temp_path $nd/tmp/fastcgi;
    uwsgi_temp_path $nd/tmp/uwsgi;
    scgi_temp_path $nd/tmp/scgi;
    server {
        listen 127.0.0.1:$port ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate $run/ecdsa.crt;
        ssl_certificate_key $run/ecdsa.key;
        location / {
            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:$sock;
        }
    }
}
NGINX
        nginx -t -p "$nd" -e "$nd/error.log" -c "$nd/nginx.conf" 2>"$run/nginx-t.log" || die "nginx -t failed: $(cat "$run/nginx-t.log")"
        taskset -c "$SERVER_CPU" nginx -p "$nd" -e "$nd/error.log" -c "$nd/nginx.conf" >"$run/nginx.log" 2>&1 &
        ;;
    ours)
        cat >"$run/ours.toml" <<TOML
processes = 1
threads = $THREADS
https = ["127.0.0.1:$port,$run/ecdsa.crt,$run/ecdsa.key"]
http-to = "$sock"
http-keepalive = $KEEPALIVE
log-level = "warn"
TOML
        taskset -c "$SERVER_CPU" "$OURS_BIN" --config "$run/ours.toml" >"$run/ours.log" 2>&1 &
        ;;
    *) die "unknown system $name (nginx, ours)" ;;
    esac
    srv_pid=$!
    pids+=("$srv_pid")
}

stop_pid() { # pid: TERM, wait up to 10 s, KILL; drop it from pids
    local p=$1
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    local keep=() q
    for q in "${pids[@]}"; do [[ $q == "$p" ]] || keep+=("$q"); done
    pids=("${keep[@]}")
}

rows=()
for name in $SYSTEMS; do
    sock=$run/backend-$name.sock
    taskset -c "$SERVER_CPU" "$BACKEND_BIN" -u "$sock" >"$run/backend-$name.log" 2>&1 &
    be_pid=$!
    pids+=("$be_pid")
    for _ in $(seq 50); do [[ -S $sock ]] && break; sleep 0.1; done
    [[ -S $sock ]] || die "backend did not create $sock: $(tail -5 "$run/backend-$name.log")"

    port=$(free_port)
    start_server "$name" "$port" "$sock"
    wait_port "$srv_pid" "$port" || die "$name did not listen on $port: $(tail -20 "$run/$name.log")"
    sleep 0.5
    body=$(curl -sk --max-time 5 "https://127.0.0.1:$port/") || die "$name: curl failed"
    [[ $body == "hello world" ]] || die "$name answered '$body'"
    sleep 0.5
    rss_idle=$(python3 "$run/proc.py" rss "$srv_pid")
    log "$name: pid $srv_pid port $port, idle RSS ${rss_idle} KiB; waiting for ${BENCH_LOCK:-no lock}"

    if [[ -n $BENCH_LOCK ]]; then exec 9>>"$BENCH_LOCK"; flock 9; fi
    python3 "$run/proc.py" idle 10 "$WAIT_IDLE"
    log "$name: wrk -t1 -c$CONNS -d${DURATION}s"
    rm -f "$run/stop"
    taskset -c "$CLIENT_CPU" python3 "$run/proc.py" sample "$srv_pid" "$be_pid" "$run/stop" "$run/sample-$name.json" &
    smp_pid=$!
    pids+=("$smp_pid")
    set +e
    # the shim goes on wrk alone: it writes its report at exit, and so would `time`
    taskset -c "$CLIENT_CPU" /usr/bin/time -f 'WRKCPU %U %S' \
        env ${FULLHS:+LD_PRELOAD=$FULLHS FULLHS_OUT=$run/fullhs-$name.txt} wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout "$WRK_TIMEOUT" -s "$run/report.lua" \
        "https://127.0.0.1:$port/" >"$run/wrk-$name.txt" 2>&1
    wrk_rc=$?
    set -e
    touch "$run/stop"
    wait "$smp_pid" || true
    stop_pid "$smp_pid"
    if [[ -n $BENCH_LOCK ]]; then flock -u 9; exec 9>&-; fi
    kill -0 "$srv_pid" 2>/dev/null || log "$name: DIED during the run: $(tail -20 "$run/$name.log")"
    sleep 2
    rss_after=$(python3 "$run/proc.py" rss "$srv_pid")
    stop_pid "$srv_pid"
    stop_pid "$be_pid"
    [[ $wrk_rc == 0 ]] || log "$name: wrk exited $wrk_rc: $(tail -5 "$run/wrk-$name.txt")"

    row=$(python3 - "$name" "$run" "$rss_idle" "$rss_after" "$CONNS" <<'EOF'
import json, re, sys
name, run, idle, after, conns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
out = open(f"{run}/wrk-{name}.txt").read()
m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
w = json.loads(m.group(1)) if m else None
s = json.load(open(f"{run}/sample-{name}.json"))
c = re.search(r"WRKCPU ([\d.]+) ([\d.]+)", out)
wrk_cpu = 100.0 * (float(c.group(1)) + float(c.group(2))) / s["wall_s"] if c else float("nan")
try:
    hs = dict(kv.split("=") for kv in open(f"{run}/fullhs-{name}.txt").read().split()[1:])
    rec = f"{int(hs['full'])} / {int(hs['unfinished'])}"
except OSError:
    rec = "?"
if not w:
    print(f"| {name} | wrk printed no result | | | | | | | | | | |"); sys.exit()
rps = w["requests"] / (w["duration_us"] / 1e6)
per = (s["peak_rss_kib"] - idle) / conns
other = s["machine_cpu"] - s["srv_cpu"] - s["be_cpu"] - wrk_cpu
print(f"| {name} | {'⚠ ' if other > 10 else ''}{rps:,.0f} | {w['requests']:,} | {w['connect']} / {w['read']} / {w['write']} / {w['timeout']} | "
      f"{w['status']} | {rec} | {w['p50_us']/1000:.0f} / {w['p99_us']/1000:.0f} / {w['max_us']/1000:.0f} | "
      f"{idle/1024:.1f} | {s['peak_rss_kib']/1024:.1f} | {per:.1f} | {after/1024:.1f} | {s['peak_fds']:,} | "
      f"{s['srv_cpu']:.0f} / {s['be_cpu']:.0f} / {wrk_cpu:.0f} / {other:.0f} |")
EOF
)
    rows+=("$row")
    log "$name: $row"
done

cat <<EOF

## c10k: wrk -t1 -c$CONNS -d${DURATION}s --timeout $WRK_TIMEOUT, $(date '+%Y-%m-%d %H:%M:%S')

- server + backend on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; one server process (nginx worker / our worker); ours threads = $THREADS;
  keep-alive timeout ${KEEPALIVE} s in both; ECDSA P-256; nginx worker_connections $NGINX_WORKER_CONNECTIONS; ulimit -n $NOFILE
- ours: $ours_id
- $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | grep -o 'wrk [^ ]*' | head -1); run dir $run

| system | req/s | requests | socket errors connect / read / write / timeout | non-2xx | wrk reconnects after / during handshake | latency p50 / p99 / max ms | RSS idle MiB | RSS peak MiB | KiB per conn | RSS after MiB | peak fds | CPU% server / backend / wrk / other |
|---|---:|---:|---|---:|---|---|---:|---:|---:|---:|---:|---|
EOF
printf '%s\n' "${rows[@]}"
cat <<EOF

req/s = wrk's requests / its run time (which includes opening the $CONNS TLS connections). RSS = VmRSS
summed over the server's process tree (master + workers; backend excluded), idle = before the load,
peak = max of 0.5 s samples during it, after = 2 s after wrk exited; KiB per conn = (peak - idle) / $CONNS.
CPU% = share of one core over the load run; other = the rest of the machine (sampler ~3, other users;
⚠ = over 10: the row overlapped other load). wrk's timeout count is not a count of slow responses:
every 2 s it adds one for each connection whose current request started more than --timeout
ago, and a connection still in its TLS handshake has not started one (start time 0), so it
counts at every tick until it is connected (wrk.c check_timeouts). With 10,000 connections to
open, most of the count is the opening; a latency max under --timeout means no response was
slow.
EOF
