#!/usr/bin/env bash
# Create benchmarks/peers/.venv with the peer libraries pinned beside torch 2.13.0 (PROTOCOLS.md,
# "Peer reference numbers"). Idempotent: reruns reuse the venv and pip skips what is installed.
#
#   bash benchmarks/peers/setup.sh            # create / update the venv, write requirements.lock
#   PEERS_VENV=/some/dir bash benchmarks/peers/setup.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${PEERS_VENV:-$HERE/.venv}"
PY="$VENV/bin/python"
TORCH="torch==2.13.0"

if [[ ! -x "$PY" ]]; then
  python3 -m venv "$VENV"
fi
PIP=("$PY" -m pip install --disable-pip-version-check)

# 1. torch first (the local CPU wheel).
"${PIP[@]}" "$TORCH"

# 2. the peers themselves, without letting them resolve their own (unpinned / conflicting) deps.
"${PIP[@]}" --no-deps fuxictr==2.3.10 deepctr-torch==0.3.0 torch-rechub==0.9.0

# 3. their needs, with torch repeated so the resolver can never swap it.
#    FuxiCTR: pyarrow, ray[data], h5py, PyYAML, scikit-learn, tqdm, polars==1.44.2 (2.x removed an
#    argument it uses), pandas, numpy, and pydantic (declared in its metadata though nothing in the
#    wheel imports it; installed so `pip check` is clean).  DeepCTR-Torch: scikit-learn, tqdm.
#    torch-rechub (optional): numpy, pandas, scikit-learn, tqdm, all covered.
NEEDS=("$TORCH" pyarrow "ray[data]" h5py PyYAML scikit-learn tqdm "polars==1.44.2" pandas numpy pydantic)
DRY="$("$PY" -m pip install --disable-pip-version-check --dry-run "${NEEDS[@]}" 2>&1 || true)"
if grep -E "Would install .*\btorch-[0-9]" <<<"$DRY" | grep -vq "torch-2.13.0"; then
  echo "setup.sh: pip would replace torch:" >&2
  grep "Would install" <<<"$DRY" >&2
  exit 1
fi
"${PIP[@]}" "${NEEDS[@]}"

# 4. check: torch still 2.13.0, every peer imports.
"$PY" - <<'PY'
import importlib, sys
import torch
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
ok = {}
for mod in ("fuxictr", "deepctr_torch", "torch_rechub"):
    try:
        importlib.import_module(mod)
        ok[mod] = "ok"
    except Exception as e:  # torch-rechub is optional
        ok[mod] = f"FAILED: {type(e).__name__}: {e}"
print("torch", torch.__version__, ok)
if any(v != "ok" for k, v in ok.items() if k != "torch_rechub"):
    sys.exit(1)
PY

"$PY" -m pip check --disable-pip-version-check
"$PY" -m pip freeze --disable-pip-version-check > "$HERE/requirements.lock"
echo "peers venv ready: $VENV  (lock: $HERE/requirements.lock)"
