#!/usr/bin/env bash
# The GPU check, in parts that each end inside 3 minutes on an H100, for a GPU rented by the quarter hour or a CI
# job with a GPU. Parts run in the order given; run them in priority order:
#
#   benchmarks/gpu_session.sh [--cpu] PART [PART...] [--out DIR]
#
#   smoke       every CUDA test (`pytest -m cuda`); the default `nextword train` by --steps, which must choose
#               bf16 and compile (a fresh machine would spend a 60-second budget compiling); 20 eager steps of
#               moe-tiny with the experts on torch's grouped matmul; the GPU-trained run exported, and
#               transformers' logits for the export compared with the run's on the GPU
#   throughput  benchmarks/gpu_throughput.py --only gpt2: gpt2-124m beside transformers' GPT2LMHeadModel, eager and
#               compiled (tokens/s, MFU, peak memory)
#   recipes     benchmarks/recipe.py: the first round's network (round1) and the second's (new, the defaults) at the gpt2-124m
#               shape, 70 s each, one after the other
#
# `smoke throughput recipes` in one command takes about 8 minutes, inside a 10-minute command and a quarter hour
# with the machine's start. OUT (default $OUT, else /tmp/nextword-gpu) gets every step's output as
# OUT/PART-STEP.log, and each part's results as OUT/PART.md, written only when every step of the part passed. A
# part that fails does not stop the next; each part is stopped at 3 minutes. The exit status is 1 when any failed.
#
# --cpu runs the same steps at tiny shapes on a CPU (eager, fp32; the CUDA tests skip), to check the script
# before device time is spent; tests/test_gpu_session.py runs `--cpu smoke` so that it cannot rot.
#
# Expected duration on an H100, estimated from counted work (no GPU was at hand to time them): compute at the
# H100's measured dense bf16 matmul rate of ~0.79 PFLOP/s times a realistic MFU, plus start-up and compilation.
#   smoke       about 2.5 min. The CUDA tests ~60 s: imports ~8 s, the compiled test's tiny model ~30 s to compile,
#               the rest a few seconds each. The default run ~80 s: the embedded corpus prepared ~15 s (10.6 MB,
#               2.7M tokens, on 16 cores), start-up and the matmul peak ~10 s, compiling ~50 s, then 300 steps of
#               4,096 tokens × 34.6 MFLOP = 4.3e13 FLOPs, ~3 s at 2% MFU (a 5.3M-parameter model is bound by
#               kernel launches, not FLOPs), and 5 evaluations ~1 s. moe-tiny ~12 s: 20 eager steps of 4,096 × 11.8
#               MFLOP = 1e12 FLOPs, under a second; the rest start-up. The export and its parity ~10 s.
#   throughput  about 2 min. Three rows of 25 steps of 16 × 1,024 tokens × 854 MFLOP (gpt2-124m) = 3.5e14 FLOPs
#               each, ~1.1 s at 40% MFU (~1.5 s for transformers eager at 30%); compiling nextword's model ~40 s
#               and transformers' ~60 s; imports and the matmul peak ~12 s.
#   recipes     about 2.7 min: 2 × 70 s budgets (start-up and compiling included: on a fresh machine ~50 s of the
#               first, less for the second, which reuses the compiled kernels of the same shape, as it does after
#               `throughput`), the corpus ~15 s unless `smoke` prepared it already.
#
# It needs no network and no setup.sh: it runs from the source tree with the machine's own python3 (set
# NEXTWORD_PYTHON to choose another). What each part imports beside the standard library, checked before any part
# runs (one line names what is missing):
#   smoke       torch numpy tokenizers safetensors pyarrow tqdm fsspec transformers pytest
#   throughput  torch numpy tqdm transformers
#   recipes     torch numpy tokenizers safetensors pyarrow tqdm fsspec
# Not needed by any part: datatrove, lm-eval, fastwarc, ray, matplotlib, tensorboard (prepared without cleaning,
# the corpus is read and encoded without the data engine).
set -uo pipefail
cd "$(dirname "$0")/.."

declare -A NEEDS=(
    [smoke]="torch numpy tokenizers safetensors pyarrow tqdm fsspec transformers pytest"
    [throughput]="torch numpy tqdm transformers"
    [recipes]="torch numpy tokenizers safetensors pyarrow tqdm fsspec"
)
# Every module holding a test marked `cuda` (tests/test_gpu_session.py checks that none is left out).
CUDA_TESTS="tests/test_cuda.py tests/test_optimizer.py tests/test_plan.py"
PART_SECONDS=180

usage="usage: benchmarks/gpu_session.sh [--cpu] PART [PART...] [--out DIR]; parts: smoke throughput recipes"
cpu=false
out=${OUT:-/tmp/nextword-gpu}
parts=()
while [ $# -gt 0 ]; do
    case $1 in
        --cpu) cpu=true ;;
        --out) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; out=$2; shift ;;
        smoke|throughput|recipes) parts+=("$1") ;;
        *) echo "gpu_session.sh: unknown argument '$1'; $usage" >&2; exit 2 ;;
    esac
    shift
done
[ ${#parts[@]} -gt 0 ] || { echo "$usage" >&2; exit 2; }
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
python=${NEXTWORD_PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NEXTWORD_CACHE=${NEXTWORD_CACHE:-/tmp/nextword-gpu-cache}

needed=$(for part in "${parts[@]}"; do echo ${NEEDS[$part]}; done | tr ' ' '\n' | sort -u | tr '\n' ' ')
"$python" - "$cpu" "${parts[*]}" $needed <<'EOF' || exit 2
import importlib.util, sys
cpu, parts, modules = sys.argv[1] == "true", sys.argv[2], sys.argv[3:]
missing = [m for m in modules if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_session.sh: {sys.executable} lacks {', '.join(missing)}, which {parts} imports; install "
             f"{'it' if len(missing) == 1 else 'them'} (pip install {' '.join(missing)}) or set NEXTWORD_PYTHON")
import torch
if not cpu and not torch.cuda.is_available():
    sys.exit(f"gpu_session.sh: torch {torch.__version__} sees no CUDA GPU; --cpu rehearses the parts on a CPU")
EOF

part=""
deadline=0
results=""

step() {  # step NAME COMMAND...: run it in what is left of the part's time, its output in OUT/PART-NAME.log
    local name=$1; shift
    local left=$((deadline - SECONDS))
    echo "== $part/$name: $*"
    if [ "$left" -le 0 ]; then
        echo "== $part/$name: not started, the part's $PART_SECONDS s are spent"
        return 1
    fi
    local began=$SECONDS
    timeout --kill-after=10 "$left" "$@" 2>&1 | tee "$out/$part-$name.log"
    local status=${PIPESTATUS[0]}
    [ "$status" -ne 124 ] && [ "$status" -ne 137 ] || echo "== $part/$name: stopped at the part's $PART_SECONDS s"
    echo "== $part/$name: exit $status after $((SECONDS - began)) s"
    return "$status"
}

record() {  # record NAME COMMAND...: a step of benchmarks/gpu_check.py, whose lines go into the results
    step "$@" || return 1
    grep -E '^(\||export of)' "$out/$part-$1.log" >> "$results"
}

part_smoke() {
    rm -rf "$out/run" "$out/moe" "$out/hf"  # a run left by an earlier check would only be resumed
    # The machine's own pytest plugins stay out of it: these modules need none.
    step tests env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$python" -m pytest -p no:cacheprovider -rs -m cuda \
        $CUDA_TESTS || return 1
    echo "CUDA tests ($CUDA_TESTS): $(grep -E '^[0-9]+ (passed|skipped)' "$out/$part-tests.log" | tail -n 1)" \
        >> "$results"
    echo "" >> "$results"
    # On a GPU the defaults, which must choose bf16 and compile; on a CPU a few KB of text and tiny shapes, eager
    # in fp32, so that it ends in seconds.
    local steps=300 moe_steps=20 device=cuda precision=bf16 run_check=(--compiled) moe_check=(--grouped)
    local tiny=() tiny_dense=()
    if $cpu; then
        steps=10 moe_steps=5 device=cpu precision=fp32 run_check=() moe_check=()
        tiny=(--source docs --data.vocab_size 512 --model.n_layers 2 --model.context 32 --train.micro_batch 4
              --precision fp32 --eval.batches 1 --eval.sample_tokens 4)
        tiny_dense=(--model.d_model 64 --model.n_heads 2 --compile off)
    fi
    step train "$python" -m nextword train --run-dir "$out/run" --steps $steps --quiet "${tiny[@]}" \
            "${tiny_dense[@]}" &&
        record train-check "$python" benchmarks/gpu_check.py run "$out/run" --header --precision $precision \
            "${run_check[@]}" || return 1
    step moe "$python" -m nextword train --run-dir "$out/moe" --preset moe-tiny --steps $moe_steps --compile off --quiet \
            "${tiny[@]}" &&
        record moe-check "$python" benchmarks/gpu_check.py run "$out/moe" --precision $precision "${moe_check[@]}" ||
        return 1
    echo "" >> "$results"
    record parity "$python" benchmarks/gpu_check.py parity "$out/run" "$out/hf" --device $device
}

part_throughput() {
    local sizes=()
    $cpu && sizes=(--device cpu --tiny --steps 2 --warmup 1)
    step gpt2 "$python" benchmarks/gpu_throughput.py --only gpt2 "${sizes[@]}" --append "$results.table" &&
        cat "$results.table" >> "$results"
    local status=$?
    rm -f "$results.table"
    return $status
}

part_recipes() {
    local sizes=(--seconds 70 --preset gpt2-124m)
    $cpu && sizes=(--seconds 15 --preset tiny --source docs)
    step compare "$python" benchmarks/recipe.py --one-at-a-time "${sizes[@]}" &&
        sed -n '/^# Recipes/,$p' "$out/$part-compare.log" >> "$results"
}

machine=$("$python" -c "import torch; print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), ' +
    (torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'))")
echo "== $machine; parts: ${parts[*]}; output in $out"
failed=()
for part in "${parts[@]}"; do
    results="$out/$part.md.partial"
    rm -f "$out/$part.md"
    note=$($cpu && echo " (--cpu: tiny shapes, a check of the script)")
    echo "# $part$note, $(date -u '+%Y-%m-%d %H:%M UTC'), $machine" > "$results"
    began=$SECONDS
    deadline=$((SECONDS + PART_SECONDS))
    if "part_$part"; then
        echo "" >> "$results"
        echo "$part passed in $((SECONDS - began)) s" | tee -a "$results"
        mv "$results" "$out/$part.md"
    else
        echo "$part FAILED after $((SECONDS - began)) s (logs: $out/$part-*.log)"
        rm -f "$results"
        failed+=("$part")
    fi
done
rm -rf "$out/run/checkpoints" "$out/moe/checkpoints" "$out/hf"  # weights: not needed to read the results
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in $out)"
    exit 1
fi
echo "passed: ${parts[*]} (results in $out/*.md)"
