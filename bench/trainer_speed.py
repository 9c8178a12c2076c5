"""Training speed of Kubetune's trainer against sentence-transformers' own trainer.

Why: the trainer's speed decides how many trials a tuning task can afford, and the honest
yardstick is what a user would otherwise run, `SentenceTransformerTrainer`. Both train the
same model on the same pairs with the same loss (in-batch negatives, scale 20), batch,
maximum sequence length and precision (bf16 autocast over fp32 weights), one after the
other in one process on one GPU, and the script prints samples/s for both, their ratio and
model FLOP utilisation (MFU) counted on real (non-padding) tokens.

FLOPs per sample are counted on the data, not on padded shapes: for each training pair,
6 x (parameters of the transformer layers) per real token (forward and backward of every
linear layer) plus 12 x layers x hidden x length^2 per text (attention scores and their
application, forward and backward), averaged over the training set truncated at the maximum
length. Embedding look-ups and normalisations are not counted. MFU divides the achieved
FLOP/s by the datasheet's dense bf16 rate of the chip (989 TFLOP/s for H100 and H200 SXM)
and, for reference, by the rate of a large bf16 matrix product measured on the spot.

Timings skip warm-up steps (kernel autotuning, and `torch.compile` on our side) and take the
steady state after them: ours from the trainer's own logging windows, which end in a device
synchronisation; sentence-transformers' between two synchronised trainer callbacks.

Under `torchrun --nproc-per-node N` (with `--skip-st`), the script measures our trainer on N
GPUs: every process runs its share of each batch and rank 0 prints the figures; the
`--ddp-*` and `--no-optimize-ddp` flags set the trainer's `GradientSync`, which applies only
without CUDA graphs (with CUDA graphs there is no DDP wrapper), except `--ddp-bf16`, which
also sets the dtype of the trainer's own gradient buckets under CUDA graphs. CUDA graphs follow
the trainer's default (on with several GPUs, off on one) unless `--cuda-graphs` or
`--no-cuda-graphs` says otherwise; `--no-overlap` averages all gradients after the backward
instead of the second stage's during it (`kubetune_trainer.sync`), and
`--dense-embedding-gradients` averages the whole word-embedding gradient instead of the
step's rows. `--windows` prints every logging window, with the CUDA graphs recorded so far:
a window with a recording is no steady state, and the warm-up must outlast them.
`--flash-varlen` and `--separate-qkv` put back the packed path's attention kernel and its
query, key and value projections of before 2026-12-04, and `--float32-residual` and
`--torch-dropout` its float32 residual stream and PyTorch's hidden dropout (the trainer's
until the third session of 2026-12-04), and `--strict-mix-order` Inductor's
guarded layer-norm fusion (until 2026-12-05), to compare on the same machine;
`--candidate NAME` puts in a change of `bench/candidates.py` that is not yet in the trainer,
and `--inductor NAME=VALUE` an Inductor setting. With `--profile DIR` it times nothing and
instead profiles `--steps` steps after the warm-up (see `profile_ours`; `--profile-gpu-only`
leaves the host's operations out).

    python bench/trainer_speed.py --data debian-train.jsonl.gz \\
        --model minilm=path/to/all-MiniLM-L6-v2 --model bert-base=random
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import candidates
import torch
import torch.distributed as dist
from trace_timeline import timeline

from kubetune.contract import DataSpec, TrialConfig
from kubetune_trainer import model as model_module
from kubetune_trainer import train as train_module
from kubetune_trainer.batching import TokenizedExamples
from kubetune_trainer.data import Example, read_examples
from kubetune_trainer.losses import build_loss
from kubetune_trainer.model import load_model
from kubetune_trainer.storage import Storage
from kubetune_trainer.tracking import LogPoint, Observer
from kubetune_trainer.train import GradientSync, Trainer
from kubetune_trainer.trial import Process

DATASHEET_BF16_FLOPS = 989e12
"""Dense bf16 tensor-core rate of the H100 and H200 SXM by NVIDIA's datasheet."""

log = logging.getLogger("bench")


@dataclass
class Figures:
    """One trainer's measurement on one model."""

    trainer: str
    model: str
    gpus: int
    samples_per_second: float
    steps_timed: int
    warmup_seconds: float
    mfu_datasheet: float
    mfu_measured_peak: float


def build_bert_base(template: Path, out: Path, seed: int = 0) -> Path:
    """A BERT-base-shaped sentence-transformers model (768 hidden, 12 layers, 12 heads) with
    random weights and the template's tokenizer, pooling and normalisation; nothing is
    downloaded."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out, safe_serialization=True)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
    ):
        if (template / name).exists():
            shutil.copy2(template / name, out / name)
    pooling = json.loads((template / "1_Pooling" / "config.json").read_text())
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(pooling | {"word_embedding_dimension": 768})
    )
    return out


def flops_per_sample(model_dir: Path, examples: list[Example], max_length: int) -> float:
    """Model FLOPs of one training pair (forward and backward), averaged over `examples`."""
    model = load_model(model_dir, str(model_dir))
    config = model.encoder.transformer.config
    layers = model.encoder.transformer.encoder.layer
    layer_parameters = sum(p.numel() for p in layers.parameters())
    lengths = [
        len(ids)
        for texts in ([e.anchor for e in examples], [e.positive for e in examples])
        for ids in model.tokenize(texts, max_length)
    ]
    tokens = sum(lengths)
    squares = sum(length * length for length in lengths)
    attention = 12 * config.num_hidden_layers * config.hidden_size * squares
    return (6 * layer_parameters * tokens + attention) / len(examples)


def matmul_peak(device: torch.device) -> float:
    """FLOP/s of an 8192^3 bf16 matrix product on random data (median of 20)."""
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / statistics.median(times)


def flash_varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    sequence_index: torch.Tensor,
    position_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_length: int,
) -> torch.Tensor:
    """The packed path's attention before 2026-12-04 (`--flash-varlen`): FlashAttention's
    variable-length kernel, for comparison with the trainer's memory-efficient kernel."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_length, max_length)


def separate_qkv(
    attention: torch.nn.Module, states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The packed path's query, key and value projections before 2026-12-04
    (`--separate-qkv`): three matrix products instead of one over the stacked weights."""
    shape = (states.shape[0], attention.num_attention_heads, attention.attention_head_size)
    query, key, value = (
        linear(states).view(shape) for linear in (attention.query, attention.key, attention.value)
    )
    return query, key, value


def float32_residual(norm: torch.nn.Module, states: torch.Tensor) -> torch.Tensor:
    """The packed path's hidden LayerNorm before its bf16 residual stream
    (`--float32-residual`): autocast's float32 output, so a float32 residual stream."""
    return norm(states)


def torch_dropout(module: torch.nn.Module, states: torch.Tensor) -> torch.Tensor:
    """The packed path's hidden dropout before its keep-bit kernel (`--torch-dropout`):
    PyTorch's."""
    return module(states)


def strict_mix_order(cuda_graphs: bool) -> dict[str, Any]:
    """The trainer's Inductor settings before 2026-12-05 (`--strict-mix-order`): a layer
    norm's backward reductions fused only past 5 Mi values, with the compiled graph guarded
    on that."""
    from torch._inductor import list_mode_options

    return dict(list_mode_options("reduce-overhead")) if cuda_graphs else {}


def set_inductor_config(settings: list[str]) -> None:
    """Set `torch._inductor.config` entries from NAME=VALUE strings (VALUE a Python literal);
    an unknown name is an error, not a silent no-op."""
    import ast

    from torch._inductor import config

    for setting in settings:
        name, _, value = setting.partition("=")
        if name not in config._config:  # type: ignore[attr-defined]
            raise SystemExit(f"--inductor {setting}: torch._inductor.config has no {name!r}")
        config.__setattr__(name, ast.literal_eval(value))


class _GraphWork:
    """How many CUDA graphs this process has recorded, and how many calls ran as a new shape's
    warm-up (eagerly, before its recording), counted by wrapping the methods of
    `torch._inductor.cudagraph_trees.CUDAGraphTreeManager` that do that. A timing window
    with either is not the steady state."""

    recorded = 0
    warmed = 0

    @classmethod
    def install(cls) -> None:
        from torch._inductor import cudagraph_trees

        manager = cudagraph_trees.CUDAGraphTreeManager
        for method, counter in (("record_function", "recorded"), ("run_eager", "warmed")):
            original = getattr(manager, method, None)
            if original is None or getattr(original, "_counted", False):
                continue

            def counted(self: Any, *args: Any, _o: Any = original, _c: str = counter) -> Any:
                setattr(cls, _c, getattr(cls, _c) + 1)
                return _o(self, *args)

            counted._counted = True  # type: ignore[attr-defined]
            setattr(manager, method, counted)


class _Windows(Observer):
    """Each logging window's figures, with the CUDA graph work done up to its end."""

    def __init__(self) -> None:
        self.points: list[LogPoint] = []
        self.graph_work: list[tuple[int, int]] = []

    def on_log(self, point: LogPoint) -> None:
        self.points.append(point)
        self.graph_work.append((_GraphWork.recorded, _GraphWork.warmed))


def _trainer(
    model_dir: Path,
    examples: list[Example],
    args: argparse.Namespace,
    device: torch.device,
    process: Process,
    observer: Observer,
) -> Trainer:
    """Kubetune's `Trainer` on the bench's settings, for `--warmup` + `--steps` steps."""
    config = TrialConfig.model_validate(
        {
            "trial": {
                "namespace": "bench",
                "task": "speed",
                "lineage": "bench",
                "iteration": 0,
                "index": 0,
                "name": "bench",
            },
            "base_model": str(model_dir),
            "data": {"train": ["unused"]},
            "hyperparameters": {
                "batch_size": args.batch_size,
                "max_seq_length": args.max_length,
                "learning_rate": 5e-5,
                "precision": "bf16",
                "max_steps": args.warmup + args.steps,
                "log_every_steps": args.log_every,
                "checkpoint_every_steps": None,
            },
            "output": {"checkpoint_uri": "/tmp/unused/model"},
        }
    )
    torch.manual_seed(config.hyperparameters.seed + process.rank)
    model = load_model(model_dir, str(model_dir))
    candidates.apply(model.encoder, args.candidate or [])
    model.encoder.to(device)
    data = TokenizedExamples(examples, model, args.max_length)
    return Trainer(
        config=config,
        encoder=model.encoder,
        data=data,
        loss_fn=build_loss(config.loss_name, config.loss),
        device=device,
        amp_dtype=torch.bfloat16,
        evaluate=None,
        observer=observer,
        save_state=None,
        gradient_sync=GradientSync(
            split_graph=not args.no_optimize_ddp,
            bf16=args.ddp_bf16,
            bucket_cap_mb=args.ddp_bucket_mb,
            static_graph=args.ddp_static_graph,
            overlap=not args.no_overlap,
            first_stage_layers=args.first_stage_layers,
            compact_embeddings=not args.dense_embedding_gradients,
        ),
        cuda_graphs=args.cuda_graphs,
    )


def ours(
    model_dir: Path,
    examples: list[Example],
    args: argparse.Namespace,
    device: torch.device,
    process: Process,
) -> tuple[float, int, float]:
    """Kubetune's `Trainer`: (samples/s after warm-up, steps timed, warm-up seconds)."""
    windows = _Windows()
    started = time.perf_counter()
    _trainer(model_dir, examples, args, device, process, windows).run()
    total = time.perf_counter() - started
    if args.windows:
        rows = [
            [point.step, round(point.samples_per_second), *work]
            for point, work in zip(windows.points, windows.graph_work, strict=True)
        ]
        print(json.dumps({"rank": process.rank, "windows": rows}), flush=True)
    timed = [point for point in windows.points if point.step > args.warmup]
    samples = len(timed) * args.log_every * args.batch_size
    seconds = sum(args.log_every * args.batch_size / point.samples_per_second for point in timed)
    return samples / seconds, len(timed) * args.log_every, total - seconds


def profile_ours(
    name: str,
    model_dir: Path,
    examples: list[Example],
    args: argparse.Namespace,
    device: torch.device,
    process: Process,
) -> None:
    """Train `--warmup` steps, then profile `--steps` more (on every process; rank 0 reports):
    a table of the costliest operations and a trace under `--profile`, and from the trace,
    per step, the wall time, the time some kernel ran, the time NCCL kernels ran with and
    without a compute kernel beside them, and where the GPU waited. With `--profile-gpu-only`
    the host's operations are not recorded: no table, and a host that runs at about its
    unprofiled speed, so the waits are those of the timed runs."""
    trainer = _trainer(model_dir, examples, args, device, process, _Windows())
    trainer.total_steps = args.warmup
    trainer.run()
    trainer.total_steps = args.warmup + args.steps
    activities = [torch.profiler.ProfilerActivity.CUDA]
    if not args.profile_gpu_only:
        activities.append(torch.profiler.ProfilerActivity.CPU)
    with torch.profiler.profile(activities=activities) as profiler:
        trainer.run()
    if not process.lead:
        return
    if not args.profile_gpu_only:  # the table's host columns need the host's operations
        print(profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
    kind = "-gpu-only" if args.profile_gpu_only else ""
    trace = args.profile / f"trace-{name}-{process.world_size}gpu{kind}.json"
    profiler.export_chrome_trace(str(trace))
    print(json.dumps({"model": name, "gpus": process.world_size} | timeline(trace, args.steps)))
    with open(trace, "rb") as raw, gzip.open(f"{trace}.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    trace.unlink()


def sentence_transformers_trainer(
    model_dir: Path, examples: list[Example], args: argparse.Namespace, out: Path
) -> tuple[float, int, float]:
    """`SentenceTransformerTrainer`: (samples/s after warm-up, steps timed, warm-up seconds)."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: dict[str, float] = {}

        def on_train_begin(self, *_: Any, **__: Any) -> None:
            self.marks["begin"] = time.perf_counter()

        def on_step_end(self, _args: Any, state: Any, *__: Any, **___: Any) -> None:
            if state.global_step in (args.warmup, args.warmup + args.steps):
                torch.cuda.synchronize()
                self.marks[str(state.global_step)] = time.perf_counter()

    model = SentenceTransformer(str(model_dir), device="cuda").to(torch.float32)
    model.max_seq_length = args.max_length
    dataset = Dataset.from_dict(
        {"anchor": [e.anchor for e in examples], "positive": [e.positive for e in examples]}
    )
    training = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        learning_rate=5e-5,
        warmup_ratio=0.1,
        bf16=True,
        save_strategy="no",
        report_to="none",
        logging_steps=args.log_every,
        disable_tqdm=True,
        seed=42,
    )
    clock = Clock()
    SentenceTransformerTrainer(
        model=model,
        args=training,
        train_dataset=dataset,
        loss=losses.MultipleNegativesRankingLoss(model, scale=20.0),
        callbacks=[clock],
    ).train()
    seconds = clock.marks[str(args.warmup + args.steps)] - clock.marks[str(args.warmup)]
    warmup = clock.marks[str(args.warmup)] - clock.marks["begin"]
    return args.steps * args.batch_size / seconds, args.steps, warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="pairs, JSONL(.gz)")
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="NAME=DIR, or NAME=random for a random BERT-base with the first model's tokenizer",
    )
    parser.add_argument(
        "--measure",
        action="append",
        help="measure only the models of these names (default: all; a random model still "
        "takes the first model's tokenizer)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--skip-st", action="store_true", help="measure only our trainer")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument(
        "--no-optimize-ddp",
        action="store_true",
        help="compile one graph instead of one per DDP gradient bucket",
    )
    parser.add_argument("--ddp-bf16", action="store_true", help="all-reduce bf16 gradients")
    parser.add_argument("--ddp-bucket-mb", type=float, default=GradientSync.bucket_cap_mb)
    parser.add_argument("--ddp-static-graph", action="store_true")
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        help="replay the compiled forward and backward as CUDA graphs (padded batches); "
        "default: the trainer's (on with several GPUs)",
    )
    parser.add_argument(
        "--first-stage-layers",
        type=int,
        help="with CUDA graphs on several GPUs: layers in the first compiled stage",
    )
    parser.add_argument(
        "--no-overlap",
        action="store_true",
        help="with CUDA graphs on several GPUs: one compiled stage, gradients averaged after "
        "the backward (GradientSync.overlap off)",
    )
    parser.add_argument(
        "--dense-embedding-gradients",
        action="store_true",
        help="with CUDA graphs on several GPUs: average the whole word-embedding gradient, not "
        "the step's rows only (GradientSync.compact_embeddings off; the trainer's until "
        "2026-12-05)",
    )
    parser.add_argument(
        "--flash-varlen",
        action="store_true",
        help="run the packed path's attention through FlashAttention's variable-length kernel "
        "(the trainer's before 2026-12-04) instead of the memory-efficient one",
    )
    parser.add_argument(
        "--separate-qkv",
        action="store_true",
        help="project query, key and value with three matrix products (the trainer's before "
        "2026-12-04) instead of one over the stacked weights",
    )
    parser.add_argument(
        "--float32-residual",
        action="store_true",
        help="keep the residual stream in float32 in training (the trainer's until 2026-12-04)",
    )
    parser.add_argument(
        "--torch-dropout",
        action="store_true",
        help="PyTorch's hidden dropout instead of the keep-bit kernel (the trainer's until "
        "2026-12-04)",
    )
    parser.add_argument(
        "--strict-mix-order",
        action="store_true",
        help="fuse a layer norm's backward reductions only on large batches, guarding the "
        "compiled graph on the token count (the trainer's until 2026-12-05)",
    )
    parser.add_argument(
        "--candidate",
        action="append",
        choices=sorted(candidates.CANDIDATES),
        help="put this candidate change of bench/candidates.py into our trainer (repeatable)",
    )
    parser.add_argument(
        "--inductor",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a torch._inductor.config entry (a Python literal) before compiling, e.g. "
        "triton.enable_pdl=True (repeatable)",
    )
    parser.add_argument(
        "--windows",
        action="store_true",
        help="print every process's logging windows: step, samples/s, CUDA graphs recorded "
        "and shape warm-ups so far",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="profile --steps steps after --warmup into this directory instead of timing",
    )
    parser.add_argument(
        "--profile-gpu-only",
        action="store_true",
        help="with --profile, record the GPU's kernels and copies only, not the host's "
        "operations, which slow the host down: the idle sites are then those of an "
        "unprofiled step",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    process = Process.from_environ()
    device = torch.device("cuda", process.local_rank)
    torch.cuda.set_device(device)
    if process.world_size > 1:
        dist.init_process_group("nccl", device_id=device)
    lead = process.lead
    if args.flash_varlen:
        model_module._attend = flash_varlen_attention
    if args.separate_qkv:
        model_module._project_qkv = separate_qkv
    if args.float32_residual:
        model_module._hidden_norm = float32_residual
    if args.torch_dropout:
        model_module._hidden_dropout = torch_dropout
    if args.strict_mix_order:
        train_module.inductor_options = strict_mix_order
    if args.cuda_graphs or (args.cuda_graphs is None and process.world_size > 1):
        _GraphWork.install()
    set_inductor_config(args.inductor)
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    spec = DataSpec.model_validate({"train": [str(args.data)], "format": "pairs"})
    examples = read_examples(Storage(), spec.train, spec, scratch / "data")
    peak = matmul_peak(device)
    figures: list[Figures] = []
    models: dict[str, Path] = {}
    for item in args.model:
        name, _, where = item.partition("=")
        template = next(iter(models.values()), None)
        if where == "random":
            assert template is not None, "a random model needs a real one before it"
            models[name] = Path(tempfile.gettempdir()) / f"bench-{name}"
            if lead:  # transformers saves only on the main process under torch.distributed
                build_bert_base(template, models[name])
            if dist.is_initialized():
                dist.barrier()
        else:
            models[name] = Path(where)
    for name, model_dir in models.items():
        if args.measure and name not in args.measure:
            continue
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            profile_ours(name, model_dir, examples, args, device, process)
            continue
        per_sample = flops_per_sample(model_dir, examples, args.max_length)
        trainers = ["kubetune"] + ([] if args.skip_st else ["sentence-transformers"])
        for trainer in trainers:
            try:
                if trainer == "kubetune":
                    rate, timed, warmup = ours(model_dir, examples, args, device, process)
                else:
                    rate, timed, warmup = sentence_transformers_trainer(
                        model_dir, examples, args, scratch / "st"
                    )
            except Exception:
                log.exception("%s on %s failed", trainer, name)
                continue
            finally:
                gc.collect()
                torch.cuda.empty_cache()
            figures.append(
                Figures(
                    trainer=trainer,
                    model=name,
                    gpus=process.world_size,
                    samples_per_second=rate,
                    steps_timed=timed,
                    warmup_seconds=warmup,
                    mfu_datasheet=rate * per_sample / (DATASHEET_BF16_FLOPS * process.world_size),
                    mfu_measured_peak=rate * per_sample / (peak * process.world_size),
                )
            )
            if lead:
                print(json.dumps(asdict(figures[-1])), flush=True)
    if lead and figures:
        _report(figures, peak, device, args)
    if dist.is_initialized():
        dist.destroy_process_group()


def _report(
    figures: list[Figures], peak: float, device: torch.device, args: argparse.Namespace
) -> None:
    print(
        f"\n{torch.cuda.get_device_name(device)}, torch {torch.__version__}; batch "
        f"{args.batch_size}, max length {args.max_length}, bf16; measured bf16 matmul peak "
        f"{peak / 1e12:.0f} TFLOP/s, datasheet {DATASHEET_BF16_FLOPS / 1e12:.0f}"
    )
    print(f"{'model':<10} {'trainer':<22} {'GPUs':>4} {'samples/s':>10} {'MFU':>6} {'ratio':>6}")
    for figure in figures:
        reference = next(
            (
                other.samples_per_second
                for other in figures
                if other.model == figure.model and other.trainer == "sentence-transformers"
            ),
            None,
        )
        ratio = f"{figure.samples_per_second / reference:.2f}" if reference else "-"
        print(
            f"{figure.model:<10} {figure.trainer:<22} {figure.gpus:>4} "
            f"{figure.samples_per_second:>10.0f} {figure.mfu_datasheet:>6.1%} {ratio:>6}"
        )
    if args.out:
        args.out.write_text(json.dumps([asdict(figure) for figure in figures], indent=2))


if __name__ == "__main__":
    main()
