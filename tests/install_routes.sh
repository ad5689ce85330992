#!/usr/bin/env bash
# The install routes end with the extension built for the torch that runs it (issue 17 item 7), checked the
# way a user installs: fresh venvs whose torch ($TORCH, default torch==2.13.0) is not the newest one pip
# finds, then
#   1. `pip install <clone>`     (build isolation: the build env must get the venv's torch, not the newest)
#   2. `pip install -e <clone>`  (build isolation, a second venv on the same clone; venv 1 must still work)
# Each route builds the extension (measured on the shared 2-core host: 518 s and 399 s, 17 min with the
# venvs), too slow for CI's suite; run it by hand:
#   bash tests/install_routes.sh            (PYTHON=python3 TORCH="torch==2.13.0" MAX_JOBS=2 by default)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
export MAX_JOBS=${MAX_JOBS:-2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/src"
cd "$WORK"  # nothing of the clone on sys.path: the venvs import what they installed
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK/src")

check() {  # the venv's torch runs the compiled kernels through the C++ autograd op
  "$1/bin/python" - <<'PY'
import torch, petal_kernels as pk
info = pk.extension_info()
assert info is not None and info["torch"] == torch.__version__, (info, torch.__version__)
x = torch.randn(4, 8, requires_grad=True)
out = pk.gated_residual(x, x, x, "middleY", gate_vector=torch.zeros(8))
assert pk.backend_name(x.device) == "cpu" and "GatedResidualAutograd" in out.grad_fn.name()
print("ok: torch", torch.__version__, "kernels", info["cpu_isa"], "in", info["directory"])
PY
}

venv() {
  "$PYTHON" -m venv "$1"
  "$1/bin/pip" install -q "$TORCH" numpy
}

venv "$WORK/a"
echo "newest torch pip finds for an unpinned build requirement:"
"$WORK/a/bin/pip" install -q --dry-run --ignore-installed --no-deps --report "$WORK/report.json" "torch>=2.4"
"$WORK/a/bin/python" -c "import json, sys; print(' ', json.load(open(sys.argv[1]))['install'][0]['metadata']['version'])" \
  "$WORK/report.json"
want=$("$WORK/a/bin/python" -c "import importlib.metadata as m; print(m.version('torch'))")

echo "1. pip install (build isolation) into a venv with torch $want"
start=$SECONDS
"$WORK/a/bin/pip" install -v "$WORK/src" > "$WORK/a.log" 2>&1 || { tail -40 "$WORK/a.log"; exit 1; }
grep -o "building the extension against torch==[^ ]*" "$WORK/a.log" | head -1
grep -q "building the extension against torch==$want " "$WORK/a.log"
check "$WORK/a"
echo "   $((SECONDS - start)) s"

echo "2. pip install -e (build isolation), a second venv on the same clone"
start=$SECONDS
venv "$WORK/b"
"$WORK/b/bin/pip" install -v -e "$WORK/src" > "$WORK/b.log" 2>&1 || { tail -40 "$WORK/b.log"; exit 1; }
grep -q "building the extension against torch==$want " "$WORK/b.log"
check "$WORK/b"
check "$WORK/a"
echo "   $((SECONDS - start)) s"
echo "all routes ok"
