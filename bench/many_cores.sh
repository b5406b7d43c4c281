#!/usr/bin/env bash
# The C servers on a machine with many cores: rcluster's policies against the
# prefork server (every process accepting on one shared socket, the kernel
# deciding), with 4, 8 and 16 workers, the servers on CPUs 0-11 and wrk on
# 12-15 with 4 threads. Needs only bash, taskset, wrk and the bench's own C
# programs (make bench-build), so it runs on a machine with nothing else.
#
#   bench/many_cores.sh OUT_DIR [SECONDS] [ROUNDS]
#
# Writes OUT_DIR/many_cores.jsonl: one line per run, wrk's BENCH_JSON (see
# bench/wrk/count.lua) plus the contender, workers, connections and round;
# bench/many_cores_report.py turns it into a table.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: bench/many_cores.sh OUT_DIR [SECONDS] [ROUNDS]}
seconds=${2:-3}
rounds=${3:-3}
server_cpus=${SERVER_CPUS:-0-11}
client_cpus=${CLIENT_CPUS:-12-15}
wrk=${WRK:-wrk}
mkdir -p "$out"
results="$out/many_cores.jsonl"
: >"$results"

{
    echo "nproc $(nproc)"
    grep -m1 'model name' /proc/cpuinfo || true
    uname -r
} >"$out/machine.txt"

# Runs a command on the given CPUs (unpinned, and said so, where taskset is missing).
pin() {
    local cpus=$1
    shift
    if command -v taskset >/dev/null; then taskset -c "$cpus" "$@"; else "$@"; fi
}
command -v taskset >/dev/null || echo "taskset missing: nothing pinned" >>"$out/machine.txt"

server_pid=""
stop_server() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_server EXIT

# Starts a contender; sets server_pid and port.
start_server() {
    local key=$1 workers=$2 log="$out/server.log"
    local argv
    case $key in
        prefork) argv=(bench/tmp/prefork --workers "$workers" --port 0) ;;
        *) argv=(bench/tmp/bench_rcluster --workers "$workers" --port 0 --policy "$key") ;;
    esac
    # Emptied here, not by the redirection in the child: the wait below
    # must not read the previous contender's ready line (and port).
    : >"$log"
    pin "$server_cpus" "${argv[@]}" >"$log" 2>&1 &
    server_pid=$!
    port=""
    for _ in $(seq 200); do
        port=$(sed -n 's|^ready http://[^:]*:\([0-9]*\).*|\1|p' "$log" | head -1)
        [ -n "$port" ] && return 0
        sleep 0.05
    done
    echo "many_cores: $key with $workers workers did not start: $(tail -3 "$log")" >&2
    return 1
}

run() {
    local key=$1 workers=$2 connections=$3 round=$4
    start_server "$key" "$workers" || return 0
    # A short warm-up, not counted.
    pin "$client_cpus" "$wrk" -t4 -c"$connections" -d1s -s bench/wrk/count.lua \
        -H "Connection: close" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
    local line
    line=$(pin "$client_cpus" "$wrk" -t4 -c"$connections" -d"${seconds}s" --timeout 10s \
        -s bench/wrk/count.lua -H "Connection: close" "http://127.0.0.1:$port/" | sed -n 's/^BENCH_JSON //p')
    stop_server
    if [ -n "$line" ]; then
        echo "{\"contender\":\"$key\",\"workers\":$workers,\"connections\":$connections,\"round\":$round,\"wrk\":$line}" >>"$results"
    fi
}

for workers in 4 8 16; do
    for round in $(seq "$rounds"); do
        # Alternate the order each round, so a drift of the machine hits every contender alike.
        if [ $((round % 2)) = 1 ]; then order="rr least shared reuseport prefork"; else order="prefork reuseport shared least rr"; fi
        for key in $order; do
            run "$key" "$workers" 128 "$round"
        done
    done
done
# A few connections at a time, with the most workers: where a hop through the primary costs most.
for round in $(seq "$rounds"); do
    for key in rr shared prefork; do
        run "$key" 16 4 "$round"
    done
done
echo "many_cores: $(wc -l <"$results") runs in $results"
