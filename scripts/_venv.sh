# Sourced by scripts/serve and scripts/test: make ./.venv and install the project.
# Needs only Python 3.11+ with venv and pip, and the package registries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${NAVI_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "navi-actor needs Python 3.11 or newer; '$PYTHON' is $("$PYTHON" --version 2>&1). Set PYTHON=python3.11." >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed$EXTRAS"
if [ ! -f "$stamp" ] || [ "$ROOT/setup.cfg" -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT$EXTRAS"
  touch "$stamp"
fi
