#!/usr/bin/env bash
# Regenerates model/tests/data/accountant_reference.json: epsilons of the
# Poisson-subsampled Gaussian mechanism from Opacus and Google dp-accounting
# (PyPI), on the order grid of primia's accountant, then runs the Rust tests
# that compare against it.
#
# Usage: scripts/validate-accountant.sh [venv-dir]   (default /tmp/dpvenv)
# Needs python3 with venv and access to PyPI the first time.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-/tmp/dpvenv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet dp-accounting numpy scipy
    # Opacus depends on torch; only its RDP analysis module (numpy + scipy) is used.
    "$venv/bin/pip" install --quiet --no-deps opacus
fi
cd "$root"
"$venv/bin/python" scripts/validate-accountant.py model/tests/data/accountant_reference.json
cargo test -p primia-model --test privacy_accountant
