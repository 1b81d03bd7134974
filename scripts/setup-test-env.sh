#!/usr/bin/env bash
# Builds everything the test suite needs, from scratch, idempotently:
#   .venv      the gateway (mitmproxy 11, duckdb, ...) plus pytest and hypothesis
#   .venv-sdk  the official anthropic and openai SDKs (their h11 clashes with mitmproxy 11)
#   .cache/claude-code  the Claude Code CLI from npm
#   prometheus          Debian's server, for the metrics test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/mitmdump ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  # mitmproxy first: it pins versions the resolver otherwise fights over.
  .venv/bin/pip install -q "mitmproxy==11.0.2"
fi
.venv/bin/pip install -q -e ".[test]"

if [ ! -x .venv-sdk/bin/python ] || ! .venv-sdk/bin/python -c "import anthropic, openai" 2>/dev/null; then
  "$PY" -m venv .venv-sdk
  .venv-sdk/bin/pip install -q anthropic openai
fi

if command -v npm >/dev/null 2>&1 && [ ! -x .cache/claude-code/node_modules/.bin/claude ]; then
  mkdir -p .cache/claude-code
  npm install --silent --prefix .cache/claude-code @anthropic-ai/claude-code >/dev/null 2>&1 \
    || echo "setup: Claude Code CLI could not be installed; its tests will be skipped"
fi

if ! command -v prometheus >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) \
      >/dev/null 2>&1 || echo "setup: prometheus could not be installed; its test will be skipped"
  fi
fi
