#!/usr/bin/env bash
# The chat page in a real browser: installs Debian's chromium (apt-get, when missing) and
# playwright-core (npm, pinned by package-lock.json, kept in target/browser-test between runs),
# runs the markdown renderer's unit tests with node, starts the server on the default model on
# a free port with small limits and an API key (so that the 401, 422 and 429 paths are
# reachable) and drives the page headless with chat.test.mjs. Screenshots at desktop and phone
# sizes land in target/screenshots/. Exits non-zero on any failure.
#
#   crates/server/tests/browser/run.sh
#
# Needs the default model (scripts/fetch-default-model), node >= 18 with npm, and as root on a
# machine without chromium, Debian's package archive. About a minute on 2 cores once installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
cd "$root"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    echo "run.sh: installing $* with apt-get"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    as_root apt-get clean # the downloaded packages are not needed again (CI's disk is small)
}
command -v chromium >/dev/null || apt_install chromium
command -v npm >/dev/null || apt_install nodejs npm
chromium_bin="$(command -v chromium)"

modules="$root/target/browser-test"
if ! cmp -s "$here/package-lock.json" "$modules/package-lock.json" 2>/dev/null || [ ! -d "$modules/node_modules/playwright-core" ]; then
    echo "run.sh: installing playwright-core into $modules"
    mkdir -p "$modules"
    cp "$here/package.json" "$here/package-lock.json" "$modules/"
    # playwright-core has no install scripts and downloads no browser: Debian's is used.
    (cd "$modules" && npm ci --silent --no-audit --no-fund --ignore-scripts)
fi

node --test --test-reporter=dot "$here/markdown.test.mjs"

# `cargo test` builds the examples, among them the server binary.
cargo test -p server --no-run --quiet
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
bin="$target_dir/debug/examples/serve"

max_input=300
api_key="browser-test-$RANDOM"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
NO_COLOR=1 MEDITRON_LOG="${MEDITRON_LOG:-info}" "$bin" --hostname 127.0.0.1 --port "$port" \
    --max-input-tokens "$max_input" --max-total-tokens 2048 --max-batch-total-tokens 8192 \
    --max-concurrent-requests 1 --api-key "$api_key" >"$log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT
for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then cat "$log"; echo "run.sh: the server died"; exit 1; fi
    sleep 0.2
done

shots="$target_dir/screenshots"
status=0
MEDITRON_URL="http://127.0.0.1:$port" MEDITRON_SCREENSHOTS="$shots" MEDITRON_MAX_INPUT_TOKENS="$max_input" \
    MEDITRON_API_KEY="$api_key" \
    PLAYWRIGHT_MODULES="$modules" CHROMIUM="$chromium_bin" node "$here/chat.test.mjs" || status=$?
# The stop test's cancellation as the server logged it.
grep -m1 "request done.*cancelled" "$log" || true
if [ "$status" -ne 0 ]; then
    echo "run.sh: FAILED; the server's log ends with:"; tail -20 "$log"
else
    echo "run.sh: the chat page passed in $("$chromium_bin" --version 2>/dev/null | head -1); screenshots in $shots"
fi
exit "$status"
