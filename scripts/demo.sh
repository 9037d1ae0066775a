#!/usr/bin/env bash
# The main job on the bundled example agent, offline: the real claude CLI (installed in .tools/claude)
# talks to the loopback Messages API fake, so no API key and no network are needed.
#
#   make demo            (creates .venv and installs the CLI first)
#   DEMO_ROOT=/some/copy bash scripts/demo.sh
#   DEMO_WORK=/some/dir  the fake's port file and the CLI's HOME (default .tools/demo; tests/test_demo.py sets both)
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT="$(pwd)"
ROOT="${DEMO_ROOT:-$PROJECT/examples/agent}"
PY="$PROJECT/.venv/bin/python"
MAESTRO=("$PY" -m maestro_py --root "$ROOT")
WORK="${DEMO_WORK:-$PROJECT/.tools/demo}"
mkdir -p "$WORK/home/tmp"

# 1. The loopback Messages API fake (the same one the end-to-end tests serve).
rm -f "$WORK/port"
"$PY" tests/e2e/fake_api.py --port-file "$WORK/port" --quiet > "$WORK/fake_api.out" 2>&1 &
FAKE_PID=$!
trap 'kill "$FAKE_PID" 2>/dev/null; wait "$FAKE_PID" 2>/dev/null || true' EXIT  # gone when the demo is
for _ in $(seq 1 100); do [ -s "$WORK/port" ] && break; sleep 0.05; done
PORT="$(cat "$WORK/port")"

# 2. Point the real CLI at it. A fresh HOME keeps the demo out of your own ~/.claude.
export ANTHROPIC_BASE_URL="http://127.0.0.1:$PORT"
export ANTHROPIC_API_KEY="sk-ant-demo-not-a-real-key-000000"
export CLAUDE_BIN="$PROJECT/.tools/claude/node_modules/.bin/claude"
export HOME="$WORK/home" TMPDIR="$WORK/home/tmp" DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1
export MAESTRO_PREFER_SUBSCRIPTION_AUTH=false
# A config folder or a credential of your own would follow the CLI to the fake: none of them is the demo's.
unset CLAUDE_CONFIG_DIR CLAUDE_CODE_OAUTH_TOKEN ANTHROPIC_AUTH_TOKEN

echo "== maestro init ($ROOT)"
"${MAESTRO[@]}" init
echo "== enqueue one tick per cadence"
for cadence in heartbeat inbox-processor weekly-strategic-memo; do
  printf '%-24s %s\n' "$cadence" "$("${MAESTRO[@]}" enqueue "$cadence" --source demo)"
done
LEDGER="$ROOT/state/cost-ledger.jsonl"
BEFORE="$( [ -f "$LEDGER" ] && wc -l < "$LEDGER" || echo 0)"  # rows of earlier demos on the same root
echo "== maestro run --once (real claude sub-sessions against $ANTHROPIC_BASE_URL)"
"${MAESTRO[@]}" run --once
# run --once has exited, so no daemon runs: status says "daemon: not running" and exits 3 (what it is for, in a
# deploy script or a health check). Here that is expected; any other failure still stops the demo.
echo "== maestro status (after run --once: \"not running\" is expected)"
"${MAESTRO[@]}" status || [ $? -eq 3 ]
echo "== ledger rows of this run ($LEDGER: one per sub-session; the inline heartbeat spent nothing)"
"$PY" - "$LEDGER" "$BEFORE" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])][int(sys.argv[2]):]
for r in rows:
    print(f"{r['cadence']:<24} exit={r['exit_code']} input={r['input_tokens']} output={r['output_tokens']} "
          f"cost_usd={r['cost_usd']} {r['duration_ms']} ms")
PYEOF
echo "== where to look"
echo "events:        tail -f $ROOT/logs/cadence-bus/bus-$(date +%F).jsonl"
echo "per-run logs:  ls $ROOT/logs/cadence-bus/subsessions/"
ls -t "$ROOT/logs/cadence-bus/subsessions/" | sed -n '1,4s/^/               /p'  # the newest (sed reads it all)
echo "status file:   $ROOT/state/cadence-bus/consumer.json"
