#!/usr/bin/env bash
# The real-client tests: builds the server, makes a virtualenv with huggingface_hub, openai and
# lm-eval (pinned in requirements.txt; kept in target/ between runs), starts the server on the
# default model on a free port, runs test_clients.py with pytest, then stops the server with
# SIGTERM and checks that it exits 0.
#
#   crates/server/tests/clients/run.sh [pytest args]
#
# MEDITRON_CLIENTS_VENV overrides where the virtualenv lives. Needs the default model
# (scripts/fetch-default-model) and PyPI (first run only). Takes about 2 minutes on 2 cores once
# the virtualenv exists.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
cd "$root"

venv="${MEDITRON_CLIENTS_VENV:-$root/target/client-venv}"
stamp="$venv/.requirements"
if ! cmp -s "$here/requirements.txt" "$stamp" 2>/dev/null; then
    echo "run.sh: installing the clients into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
fi

# `cargo test` builds the examples, among them the server binary.
cargo test -p server --no-run --quiet
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
bin="$target_dir/debug/examples/serve"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
MEDITRON_LOG="${MEDITRON_LOG:-info}" "$bin" --hostname 127.0.0.1 --port "$port" \
    --max-input-length 3696 --max-total-tokens 4096 --max-batch-prefill-tokens 4096 >"$log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then cat "$log"; echo "run.sh: the server died"; exit 1; fi
    sleep 0.2
done

status=0
MEDITRON_URL="http://127.0.0.1:$port" "$venv/bin/python" -m pytest -q "$here/test_clients.py" "$@" || status=$?

# SIGTERM while a stream runs: the stream must finish, the server must exit 0.
curl -sN "http://127.0.0.1:$port/generate_stream" -H 'content-type: application/json' \
    -d '{"inputs": "Write a long poem", "parameters": {"max_new_tokens": 48, "ignore_eos": true}}' >"$log.stream" &
curl_pid=$!
sleep 0.5
kill -TERM "$pid"
wait "$curl_pid" || true
server_status=0
wait "$pid" || server_status=$?
trap - EXIT
if ! grep -q '"generated_text":"' "$log.stream"; then
    echo "run.sh: FAILED: the stream in flight at SIGTERM did not finish"; status=1
elif [ "$server_status" -ne 0 ]; then
    echo "run.sh: FAILED: the server exited $server_status after SIGTERM"; tail -20 "$log"; status=1
else
    echo "run.sh: SIGTERM drained the stream in flight and the server exited 0"
fi
rm -f "$log" "$log.stream"
exit "$status"
