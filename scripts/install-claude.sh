#!/usr/bin/env bash
# Install the real Claude Code CLI, pinned, into the project-local folder
# .tools/claude/ (never globally). Idempotent: does nothing when the pinned
# version is already installed there.
#
#   bash scripts/install-claude.sh
#
# The binary ends up at .tools/claude/node_modules/.bin/claude. The npm package
# ships the platform binary as an optional dependency, so no postinstall
# download is needed (this machine reaches only the package registries).
set -euo pipefail

CLAUDE_VERSION="2.1.197"
PACKAGE="@anthropic-ai/claude-code@${CLAUDE_VERSION}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${ROOT}/.tools/claude"
BIN="${PREFIX}/node_modules/.bin/claude"

installed_version() {
    # Prints the installed version, or nothing. Bounded: --version takes ~0.1 s.
    if [ -x "${BIN}" ]; then
        HOME="${PREFIX}/.home" DISABLE_AUTOUPDATER=1 \
            timeout 30 "${BIN}" --version 2>/dev/null | head -n1 || true
    fi
}

case "$(installed_version)" in
    "${CLAUDE_VERSION}"*)
        echo "install-claude: ${PACKAGE} already installed at ${BIN}"
        exit 0
        ;;
esac

if ! command -v npm >/dev/null 2>&1; then
    echo "install-claude: ERROR: npm not found on PATH; install Node.js and npm (e.g. apt-get install nodejs npm) and re-run" >&2
    exit 1
fi

mkdir -p "${PREFIX}" "${PREFIX}/.home"
# A package.json of its own keeps npm from walking up into another project.
if [ ! -f "${PREFIX}/package.json" ]; then
    printf '{\n  "name": "maestro-tools-claude",\n  "private": true\n}\n' > "${PREFIX}/package.json"
fi

echo "install-claude: installing ${PACKAGE} into ${PREFIX}"
if ! npm install --prefix "${PREFIX}" --no-audit --no-fund --save-exact "${PACKAGE}"; then
    echo "install-claude: ERROR: npm install of ${PACKAGE} failed" >&2
    exit 1
fi

got="$(installed_version)"
case "${got}" in
    "${CLAUDE_VERSION}"*)
        echo "install-claude: OK: ${BIN} --version -> ${got}"
        ;;
    *)
        echo "install-claude: ERROR: ${BIN} --version printed '${got}', expected ${CLAUDE_VERSION}" >&2
        exit 1
        ;;
esac
