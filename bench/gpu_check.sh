#!/usr/bin/env bash
# bench/gpu_check.sh: the one-command GPU check of issue 12 §10 (bench/gpu_check.py says what it measures).
#
#   bash bench/gpu_check.sh --dry-run --out /tmp/gpu_check.json   # CPU, tiny sizes, < 2 min (tests/test_gpu_check.py)
#   bash bench/gpu_check.sh --out gpu_check.json                  # one H200, <= 8 min, one JSON file
#   bash bench/gpu_check.sh --build-wheels                        # here (pip access): fills build/gpu_check_wheels
#
# Wheels to carry. The GPU image (python 3.12, torch 2.11, transformers 5.17, triton 3.6, peft, accelerate,
# pandas, pyarrow, psutil, ninja, einops, msgpack, py-cpuinfo, nvidia-ml-py, huggingface-hub, tokenizers,
# safetensors, typer, ...) lacks DeepSpeed, TRL, datasets and omegaconf. `--build-wheels` writes them into
# build/gpu_check_wheels/ (git-ignored through build/): about 21 MB together, well inside the 64 MiB that
# travels (the working tree itself is ~2 MB):
#   deepspeed==0.19.8   source-only on PyPI: `DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation` builds a
#                       pure-Python wheel here (its ops JIT-compile on the GPU with the image's nvcc/ninja)
#   hjson pydantic pydantic-core annotated-types typing-inspection      (DeepSpeed's requirements not in the image)
#   trl==1.16.0 datasets==5.2.0 dill multiprocess                       (TRL and its datasets)
#   omegaconf==2.4.0                                                    (aigp_train's recipe loader)
#   transformers==5.23.0 peft==0.21.2   the project's pins (13 MB + 0.8 MB); without them the image's transformers
#                       5.17 runs (GPU_CHECK_IMAGE_TRANSFORMERS=1 --build-wheels leaves both out). The JSON records
#                       the versions that actually ran.
# The wheels are for the GPU image's Python 3.12 (pip refuses them on another Python).
# Not carried: pyarrow (the image's is used; datasets needs >= 24 and pyarrow's wheel alone is ~45 MB) and vLLM
# (its wheel is far larger than 64 MiB; the image has none): the check measures generation on the hf backend.
#
# Through the device tool, from the repo root (the wheels built here first; timeout <= 8 min: the sections share
# a 420 s budget, installing the wheels takes ~15 s):
#   run(command="bash bench/gpu_check.sh --out $OUT/gpu_check.json", carry=["build/gpu_check_wheels"], timeout_s=480)
# On the GPU the wheels are installed with pip --no-index --target /tmp/gpu_check_site (no network there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--build-wheels" ]]; then
  mkdir -p build/gpu_check_wheels
  plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  pins=(trl==1.16.0 datasets==5.2.0 omegaconf==2.4.0 hjson==3.1.0 pydantic==2.13.4 pydantic_core==2.46.4
        annotated-types==0.7.0 typing-inspection==0.4.2 dill==0.4.1 multiprocess==0.70.19)
  [[ -z "${GPU_CHECK_IMAGE_TRANSFORMERS:-}" ]] && pins+=(transformers==5.23.0 peft==0.21.2)
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d build/gpu_check_wheels "${pins[@]}"
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w build/gpu_check_wheels deepspeed==0.19.8
  ls -l build/gpu_check_wheels
  du -ch build/gpu_check_wheels/*.whl | tail -1
  exit 0
fi

dry=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && dry=1; done
if [[ $dry == 0 ]] && compgen -G "build/gpu_check_wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
    build/gpu_check_wheels/*.whl
  export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
  # the carried transformers/peft need the image's regex, tokenizers and huggingface-hub to be recent
  # enough; if they do not import, fall back to the image's own (the JSON records what ran)
  if ! "$PY" -c "import transformers, peft" 2>/tmp/gpu_check_import.err; then
    echo "[gpu_check] carried transformers/peft do not import ($(tail -1 /tmp/gpu_check_import.err)); using the image's" >&2
    rm -rf /tmp/gpu_check_site/transformers /tmp/gpu_check_site/transformers-*.dist-info \
      /tmp/gpu_check_site/peft /tmp/gpu_check_site/peft-*.dist-info
  fi
  GPU_CHECK_WHEELS="$(cd build/gpu_check_wheels && ls *.whl | tr '\n' ' ')"
  export GPU_CHECK_WHEELS
fi
exec "$PY" bench/gpu_check.py "$@"
