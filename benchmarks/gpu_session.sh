#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a short session on a machine with a CUDA GPU and its own torch:
#   1. the GPU tests (the memory model against the CUDA allocator);
#   2. the main job on the GPU for a short budget: bf16, fused AdamW, torch.compile, MFU in the log;
#   3. benchmarks/gpu_throughput.py (gpt2-124m beside transformers, llama-1b under FSDP), its table appended to
#      benchmarks/RESULTS.md and copied to the output folder;
#   4. benchmarks/recipe.py: today's recipe (AdamW) and the new one (Muon, QK-norm) at gpt2-124m, 60 s each, one
#      after the other, compiled in bf16; its table appended to benchmarks/RESULTS.md too.
#
#   benchmarks/gpu_session.sh [OUT]          # on the GPU machine; OUT defaults to $OUT, else /tmp/nextword-gpu
#   benchmarks/gpu_session.sh --cpu [OUT]    # the same steps at tiny shapes on a CPU, compiled as on a GPU, to
#                                            # check the script first
#
# It needs no network and no setup.sh: it runs from the source tree with the machine's own python3 (set
# NEXTWORD_PYTHON to choose another), which must have torch, tokenizers, safetensors, numpy and transformers.
# Each step's output goes to OUT/<step>.log as well as the terminal; a failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."

cpu=false
if [ "${1:-}" = "--cpu" ]; then cpu=true; shift; fi
out=${1:-${OUT:-/tmp/nextword-gpu}}
mkdir -p "$out"
python=${NEXTWORD_PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NEXTWORD_CACHE=${NEXTWORD_CACHE:-/tmp/nextword-gpu-cache}
failed=()

step() {  # step NAME COMMAND...: run, keep its log, remember a failure
    local name=$1; shift
    echo "== $name: $*"
    local began=$SECONDS
    "$@" 2>&1 | tee "$out/$name.log"
    local status=${PIPESTATUS[0]}
    echo "== $name: exit $status after $((SECONDS - began)) s"
    [ "$status" -eq 0 ] || failed+=("$name")
}

step machine "$python" -c "import torch; print(torch.__version__, torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA GPU')"
if $cpu; then
    step tests "$python" -m pytest -q -p no:cacheprovider tests/test_plan.py -k cuda_allocator
    step train "$python" -m nextword train --run-dir "$out/run" --steps 20 --model.n_layers 2 --train.compile on --quiet
    step throughput "$python" benchmarks/gpu_throughput.py --device cpu --tiny --steps 2 --warmup 1 \
        --max-fsdp-batch 2 --append "$out/gpu_results.md"
    step recipes "$python" benchmarks/recipe.py --seconds 20 --preset tiny --one-at-a-time \
        --recipe "today-compiled:train.compile=on" --recipe "new-compiled:train.compile=on,train.optimizer=muon,model.qk_norm=true" \
        --recipes ""
else
    step tests "$python" -m pytest -q -p no:cacheprovider tests/test_plan.py -k cuda_allocator
    step train "$python" -m nextword train --run-dir "$out/run" --budget 2m --quiet
    step throughput "$python" benchmarks/gpu_throughput.py --append "$out/gpu_results.md"
    [ -f "$out/gpu_results.md" ] && cat "$out/gpu_results.md" >> benchmarks/RESULTS.md
    step recipes "$python" benchmarks/recipe.py --seconds 60 --preset gpt2-124m --one-at-a-time
    grep -E '^(#|\||[a-z])' "$out/recipes.log" | sed -n '/^# Recipes/,$p' >> benchmarks/RESULTS.md
fi
rm -rf "$out/run/checkpoints"  # the weights are not needed to read the run's log and figures
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in $out)"
    exit 1
fi
echo "all steps passed (logs in $out)"
