#!/usr/bin/env bash
# Install the real Claude Code CLI, pinned, into the project-local folder
# .tools/claude/ (never globally). Idempotent: does nothing when the pinned
# version is already installed there.
#
#   bash scripts/install-claude.sh
#
# The binary ends up at .tools/claude/node_modules/.bin/claude. The npm package
# ships the platform binary as an optional dependency; its postinstall
# (install.cjs, no download) links that binary over the package's stub
# bin/claude.exe, which otherwise only prints "claude native binary not
# installed" and exits 1. npm 11 warns about install scripts not covered by an
# `allowScripts` policy and newer npm skips them, so this script installs with
# --ignore-scripts and runs that one postinstall itself: the same result
# whatever the npm version or policy. (npm's "EBADENGINE ... required: node
# >=22" warning is harmless: the CLI is a native binary, and install.cjs runs
# on the Node 20 here.)
set -euo pipefail

CLAUDE_VERSION="2.1.337"
PACKAGE="@anthropic-ai/claude-code@${CLAUDE_VERSION}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${ROOT}/.tools/claude"
BIN="${PREFIX}/node_modules/.bin/claude"
PKG_DIR="${PREFIX}/node_modules/@anthropic-ai/claude-code"

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
if ! npm install --prefix "${PREFIX}" --no-audit --no-fund --save-exact --ignore-scripts "${PACKAGE}"; then
    echo "install-claude: ERROR: npm install of ${PACKAGE} failed" >&2
    exit 1
fi

# The package's own postinstall: puts the platform binary at bin/claude.exe.
if [ -f "${PKG_DIR}/install.cjs" ]; then
    if ! (cd "${PKG_DIR}" && node install.cjs); then
        echo "install-claude: ERROR: ${PKG_DIR}/install.cjs (the package's postinstall) failed" >&2
        exit 1
    fi
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
