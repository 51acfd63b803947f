#!/usr/bin/env bash
# The seed's own stack, for benchmarks/keras23/peer.py: Keras 2.3.1 (the
# notebook's traceback shows keras.callbacks.callbacks.History, i.e. 2.3.x,
# on Python 3.7) with keras-preprocessing 1.1.0, the release current with it
# (its affine transforms centre on size / 2 + 0.5, as cifar_jax's augment
# reproduces). TensorFlow 1.15 as Intel's build (intel-tensorflow 1.15.2):
# the same TF 1.15 code with oneDNN kernels, for speed on CPUs.
#
#   bash benchmarks/keras23/make_venv.sh [VENV]     (default: .venv-keras23)
#
# Needs Python 3.7 (pyenv's newest 3.7.x, else python3.7 on PATH): exits 2
# where there is none. Builds the venv afresh only when its pinned list
# changed; prints the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${1:-.venv-keras23}
pins=(intel-tensorflow==1.15.2 keras==2.3.1 keras-preprocessing==1.1.0
      'h5py<3' 'protobuf<3.21' 'numpy<1.19' 'scipy<1.8' pillow)
exe=""
if command -v pyenv >/dev/null; then
  exe=$(ls -d "$(pyenv root)"/versions/3.7.*/bin/python3.7 2>/dev/null |
        sort -V | tail -n 1)
fi
if [[ -z "$exe" ]] && python3.7 -c '' 2>/dev/null; then
  exe=$(command -v python3.7)
fi
[[ -n "$exe" ]] || { echo "error: no Python 3.7 (pyenv or PATH)" >&2; exit 2; }
if [[ -f "$venv/pins" && "$(cat "$venv/pins")" == "${pins[*]}" ]]; then
  echo "$venv/bin/python"
  exit 0
fi
rm -rf "$venv"
"$exe" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade 'pip<24' >&2
"$venv/bin/python" -m pip install --quiet "${pins[@]}" >&2
"$venv/bin/python" -c 'import tensorflow as tf, keras, keras_preprocessing as kp
print("Keras", keras.__version__, "on TensorFlow", tf.__version__,
      "keras-preprocessing", kp.__version__)' >&2
echo "${pins[*]}" > "$venv/pins"
echo "$venv/bin/python"
