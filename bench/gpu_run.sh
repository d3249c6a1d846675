#!/usr/bin/env bash
# bench/gpu.py on a lent GPU machine, which has torch but an older transformers and no trl,
# datasets or network: a venv over the image's packages (--system-site-packages) with the wheels
# that bench/gpu_prepare.py put in .gpu-bench/ installed --no-deps, then the bench, its JSON
# written to $OUT/gpu.json part by part. Within 5 minutes in all (set-up included).
#
#   here:   python bench/gpu_prepare.py
#   there:  the device tool's run, command "bash bench/gpu_run.sh", carry [".gpu-bench"], timeout_s 420
#
# Arguments go to bench/gpu.py (for example --smoke, to try this script on a CPU machine);
# PYTHON names the image's interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-300}
OUT=${OUT:-.}
PY=${PYTHON:-python3}
VENV=${GPU_BENCH_VENV:-/tmp/gpu-bench-venv}
WHEELS=.gpu-bench/wheels
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "bench/gpu_run.sh: no wheels in $WHEELS: run python bench/gpu_prepare.py and carry .gpu-bench" >&2
    exit 2
fi
rm -rf "$VENV"
"$PY" -m venv --system-site-packages --without-pip "$VENV" || exit 1
SITE=$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')
# The image's python is itself a venv (/opt/torch/.venv), and --system-site-packages reaches the
# interpreter it was made from, not the image's packages: add those with their own .pth files,
# after the venv's site-packages (the carried wheels first) and before the base interpreter's.
"$PY" -c 'import site; print("".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))' \
    > "$SITE/image-packages.pth" || exit 1
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || exit 1
"$VENV/bin/python" - <<'EOF' || exit 1
import importlib.metadata as md
print("installed over the image:", ", ".join(f"{n} {md.version(n)}" for n in
      ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers", "huggingface_hub")))
EOF
echo "set-up took ${SECONDS} s"
PYTHONUNBUFFERED=1 exec "$VENV/bin/python" bench/gpu.py --out "$OUT/gpu.json" --budget $((BUDGET - SECONDS - 5)) "$@"
