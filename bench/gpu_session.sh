#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, run from the repository root on the GPU machine:
#   bash bench/gpu_session.sh OUT_DIR STAGE...
#   (stages: check speed speed-ours quality quality-full attention ddp trial2 ddp2 sweep
#    sweep-defaults sweep-candidates candidates profile profile-gpu-only profile2 net scaling
#    overlap ddp-variants search-random search-tpe search-tpe-prune)
# Expects .bench/ (minilm/ as a sentence-transformers dir, debian-train.jsonl.gz,
# debian-test.jsonl) and, where the machine lacks them, wheels in .whl/.
# Every GPU's clocks, power and clock-limit reasons are sampled each second into
# OUT_DIR/gpu-telemetry.csv while the stages run (each stage's start time is printed), to tell
# a GPU held back by its power or temperature limit from one that waits for work.
set -u
out=$1
shift
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD:$PWD/operator:$PWD/trainer_image
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
reasons=clocks_event_reasons.active  # older drivers name it clocks_throttle_reasons
nvidia-smi --query-gpu=$reasons --format=csv >/dev/null 2>&1 ||
    reasons=clocks_throttle_reasons.active
fields=timestamp,index,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu
nvidia-smi --query-gpu=$fields,utilization.gpu,$reasons --format=csv -l 1 \
    >"$out/gpu-telemetry.csv" 2>&1 &
sampler=$!
trap 'kill $sampler 2>/dev/null' EXIT
data=.bench/debian-train.jsonl.gz
models=(--model minilm=.bench/minilm --model bert-base=random)
trial() {  # method, command prefix (python3, torchrun ...)
    local method=$1
    shift
    python3 bench/debian_trial.py --model .bench/minilm --train $data \
        --test .bench/debian-test.jsonl --method "$method" --out "/tmp/$method" >"/tmp/$method.json"
    "$@" -m kubetune_trainer --config "/tmp/$method.json" 2>&1 | tee "$out/quality-$method.log"
    cp "/tmp/$method/result.json" "$out/result-$method.json"
}
for stage in "$@"; do
    echo "=== $stage $(date -u +%FT%TZ)"
    case $stage in
    check)  # CHECK_FLAGS: more flags of bench/check_packed.py, e.g. --candidate NAME
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        python3 -c 'import torch, transformers, sentence_transformers as st
print(torch.__version__, transformers.__version__, st.__version__, torch.cuda.device_count())'
        # shellcheck disable=SC2086
        python3 bench/check_packed.py --model .bench/minilm --data $data ${CHECK_FLAGS:-} 2>&1 |
            grep -v Warn
        ;;
    speed)
        python3 bench/trainer_speed.py --data $data "${models[@]}" --out "$out/speed.json" \
            2>&1 | tee "$out/speed.log"
        ;;
    quality)  # one process, also on a machine with several GPUs
        trial full env KUBETUNE_PROCESSES=1 python3
        trial lora env KUBETUNE_PROCESSES=1 python3
        ;;
    quality-full)
        trial full env KUBETUNE_PROCESSES=1 python3
        ;;
    attention)
        python3 bench/attention_layouts.py --model .bench/minilm --data $data ${ATTENTION_FLAGS:-} \
            2>&1 | grep -v -i warn | tee "$out/attention.log"
        ;;
    ddp)
        python3 bench/trainer_speed.py --data $data "${models[@]}" --skip-st \
            --out "$out/ddp-1gpu.json" 2>&1 | tee "$out/ddp-1gpu.log"
        torchrun --nproc-per-node 2 bench/trainer_speed.py --data $data "${models[@]}" \
            --skip-st --out "$out/ddp-2gpu.json" 2>&1 | tee "$out/ddp-2gpu.log"
        trial full torchrun --nproc-per-node 2
        ;;
    trial2)  # the operator's command on a Pod with two GPUs: one process per GPU
        trial full env KUBETUNE_PROCESSES=2 python3
        ;;
    ddp2)
        torchrun --nproc-per-node 2 bench/trainer_speed.py --data $data "${models[@]}" \
            --skip-st --out "$out/ddp-2gpu.json" 2>&1 | tee "$out/ddp-2gpu.log"
        torchrun --nproc-per-node 2 bench/trainer_speed.py --data $data "${models[@]}" \
            --skip-st --no-optimize-ddp --out "$out/ddp-2gpu-one-graph.json" 2>&1 |
            tee "$out/ddp-2gpu-one-graph.log"
        ;;
    sweep | sweep-defaults | sweep-candidates)  # sweep-candidates: SWEEP_VARIANTS overrides
        variants=(current reference reference-len128 reference-warmup reference-decay
            reference-no-attn-dropout)
        [[ $stage == sweep-defaults ]] && variants=(defaults)
        # shellcheck disable=SC2206
        [[ $stage == sweep-candidates ]] &&
            variants=(${SWEEP_VARIANTS:-defaults no-hidden-dropout})
        python3 bench/quality_sweep.py --model .bench/minilm --train $data \
            --test .bench/debian-test.jsonl "${variants[@]/#/--variant=}" \
            --seeds ${SEEDS:-42 43 44} --parallel ${PARALLEL:-8} --work "/tmp/$stage" \
            --out "$out/$stage.json" 2>&1 | grep -v Warn | tee "$out/$stage.log"
        ;;
    profile)  # SPEED_FLAGS as for speed-ours, e.g. --measure bert-base
        # shellcheck disable=SC2086
        python3 bench/trainer_speed.py --data $data "${models[@]}" --skip-st --steps 5 \
            --profile "$out/traces" ${SPEED_FLAGS:-} 2>&1 | tee "$out/profile-1gpu.log"
        ;;
    profile-gpu-only)  # the GPU's kernels and copies only, so the host runs at about its
        # unprofiled speed and the idle sites are those of a timed run; SPEED_FLAGS as for
        # speed-ours (default --measure bert-base)
        # shellcheck disable=SC2086
        python3 bench/trainer_speed.py --data $data "${models[@]}" --skip-st --steps 10 \
            --profile "$out/traces" --profile-gpu-only ${SPEED_FLAGS:---measure bert-base} 2>&1 |
            tee "$out/profile-gpu-only.log"
        ;;
    profile2)
        torchrun --nproc-per-node 2 bench/trainer_speed.py --data $data "${models[@]}" \
            --skip-st --steps 5 --profile "$out/traces" ${DDP_FLAGS:-} 2>&1 |
            tee "$out/profile-2gpu.log"
        ;;
    net)
        nvidia-smi topo -m
        torchrun --nproc-per-node 2 bench/allreduce_speed.py 2>&1 | tee "$out/net.log"
        ;;
    speed-ours)  # SPEED_FLAGS: more flags of bench/trainer_speed.py, e.g. --cuda-graphs
        # shellcheck disable=SC2086
        python3 bench/trainer_speed.py --data $data "${models[@]}" --skip-st ${SPEED_FLAGS:-} \
            2>&1 | tee -a "$out/speed-ours.log"
        ;;
    scaling)  # one GPU, then two, on the same machine; SPEED_FLAGS as for speed-ours
        for gpus in 1 2; do
            # shellcheck disable=SC2086
            torchrun --nproc-per-node $gpus bench/trainer_speed.py --data $data "${models[@]}" \
                --skip-st ${SPEED_FLAGS:-} 2>&1 | tee -a "$out/scaling.log"
        done
        ;;
    overlap)  # BERT-base: one GPU with graphs, then two: the default (graphs, overlapped
        # buckets), bf16 buckets, and OVERLAP_VARIANT (flags, several separated by ";";
        # default --no-overlap); each run cut off after 135 s
        run=(timeout 135 torchrun --nproc-per-node)
        speed=(bench/trainer_speed.py --data $data "${models[@]}" --skip-st --measure bert-base
            --warmup 100 --windows)
        "${run[@]}" 1 "${speed[@]}" --cuda-graphs 2>&1 | tee -a "$out/overlap.log"
        IFS=';' read -ra overlap_variants <<<"${OVERLAP_VARIANT:---no-overlap}"
        for flags in "" "--ddp-bf16" "${overlap_variants[@]}"; do
            echo "--- 2 GPUs: ${flags:-default}" | tee -a "$out/overlap.log"
            # shellcheck disable=SC2086
            "${run[@]}" 2 "${speed[@]}" $flags 2>&1 | tee -a "$out/overlap.log"
        done
        ;;
    ddp-variants)  # VARIANTS="name:flags;name:flags" (flags of bench/trainer_speed.py)
        IFS=';' read -ra variants <<<"${VARIANTS:-default:}"
        for variant in "${variants[@]}"; do
            echo "--- ${variant%%:*}: ${variant#*:}" | tee -a "$out/ddp-variants.log"
            # shellcheck disable=SC2086
            torchrun --nproc-per-node 2 bench/trainer_speed.py --data $data "${models[@]}" \
                --skip-st ${variant#*:} 2>&1 | tee -a "$out/ddp-variants.log" |
                grep -A3 "^model "
        done
        ;;
    candidates)  # BERT-base with the trainer as it is, without hidden dropout and with
        # what it had before (--float32-residual --torch-dropout); then MiniLM.
        # Each run is cut off after CANDIDATE_TIMEOUT seconds (default 240); CANDIDATE_RUNS
        # ("model:flags;model:flags", flags of bench/trainer_speed.py) replaces the list.
        runs=("bert-base:" "bert-base:--candidate no-hidden-dropout"
            "bert-base:--float32-residual --torch-dropout" "minilm:")
        [[ -n ${CANDIDATE_RUNS:-} ]] && IFS=';' read -ra runs <<<"$CANDIDATE_RUNS"
        for run in "${runs[@]}"; do
            echo "--- ${run%%:*}: ${run#*:} ($(date -u +%T))" | tee -a "$out/candidates.log"
            # shellcheck disable=SC2086
            timeout "${CANDIDATE_TIMEOUT:-240}" python3 bench/trainer_speed.py --data $data \
                "${models[@]}" --skip-st --measure "${run%%:*}" ${run#*:} 2>&1 |
                tee -a "$out/candidates.log" | grep -A2 "^model \|Error\|error:"
        done
        ;;
    search-random | search-tpe | search-tpe-prune)
        args=(--algorithm random)
        [[ $stage != search-random ]] && args=(--algorithm tpe)
        [[ $stage == search-tpe-prune ]] && args+=(--prune)
        python3 bench/search_bench.py --model .bench/minilm --train $data \
            --test .bench/debian-test.jsonl "${args[@]}" --trials 8 --seed 0 \
            --work "/tmp/$stage" --out "$out/$stage.json" 2>&1 | tee "$out/$stage.log"
        ;;
    esac
done
