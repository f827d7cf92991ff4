#!/usr/bin/env bash
# Set up animacy in .venv at the repository root.
#   ./setup.sh          the analysis half (no torch): enough for simulate / analyze / export
#   ./setup.sh --dev    + test tools, and R with lme4/lmerTest (apt, as root) for the lme4 backend
set -euo pipefail
cd "$(dirname "$0")"
dev=0
[ "${1:-}" = "--dev" ] && dev=1
PY=${PYTHON:-python3}

if [ "$dev" = 1 ] && ! Rscript -e 'library(lmerTest); library(lme4)' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends r-base-core r-cran-lme4 r-cran-lmertest >/dev/null
  else
    echo "setup.sh: R with lme4 + lmerTest is missing and this is not root: the lme4 tests will be skipped" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras="analysis"
if [ "$dev" = 1 ]; then
  extras="analysis,dev"
  command -v R >/dev/null 2>&1 && extras="$extras,lme4"
fi
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "animacy is set up: .venv/bin/animacy"
