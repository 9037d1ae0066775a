#!/usr/bin/env bash
# Regenerate the committed service examples (launchd/ and systemd/) for the bundled example agent.
# Every input is pinned so the output depends only on examples/agent/cadences.toml and the generator:
# a placeholder interpreter, root and claude, and the stop timeout of the default settings (30 + 5 + 15 s).
# tests/test_service.py runs this into a temporary folder and compares.
#
#   bash scripts/gen-service-examples.sh [OUT_DIR]     (default: the repository top level)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-.}"
PY="${PYTHON:-.venv/bin/python}"
ARGS=(--python /opt/maestro/.venv/bin/python --deploy-root /opt/maestro/examples/agent --stop-timeout 50
      --claude /opt/maestro/.tools/claude/node_modules/.bin/claude)
MAESTRO=("$PY" -m maestro_py --root examples/agent service install "${ARGS[@]}")

mkdir -p "$OUT/launchd" "$OUT/systemd"
rm -f "$OUT"/launchd/*.plist "$OUT"/systemd/maestro-*.service "$OUT"/systemd/maestro-*.timer
"${MAESTRO[@]}" --launchd --dest "$OUT/launchd" >/dev/null
"${MAESTRO[@]}" --systemd --user --dest "$OUT/systemd" >/dev/null
ls "$OUT/launchd" "$OUT/systemd"
