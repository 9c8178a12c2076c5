"""The training loop: plain PyTorch, one optimizer step per batch.

AdamW (fused on CUDA; no weight decay on biases and norm weights), linear warmup then linear
decay to zero, autocast in the trial's precision (a loss scaler only for fp16), gradient
clipping (on CUDA folded into the fused AdamW step, which saves a pass over the gradients),
and optionally gradient caching. On CUDA the encoder's packed forward is compiled
(`torch.compile`, one dynamic-shape graph). With `cuda_graphs` it is also replayed as CUDA
graphs: each batch is padded with dummy texts to one of a few shapes, the same on every
process (`batching.graph_shape`), and the host issues a whole forward or backward as one
replay instead of hundreds of kernel launches. That is the default with several processes
(a multi-GPU trial scales far better so, docs/benchmarks.md) and off on one GPU, where it
gains nothing on BERT-base. With several processes and CUDA graphs there is no
DistributedDataParallel: every process gets a share of each batch balanced by tokens, the
forward of BERT models runs in two compiled stages, and the trainer averages gradients in
buckets, the second stage's while the first stage's backward runs (`kubetune_trainer.sync`),
which also gives the gradients' norm for clipping. Without CUDA graphs (or with gradient
caching) the encoder is wrapped in DistributedDataParallel instead. Nothing in an ordinary
step waits for the accelerator: batches come from pre-tokenized arrays through pinned
memory, and the loss stays on the device until a logging step reads it, so the host queues
the next step while the GPU runs this one.
Evaluation and resumable state saves happen every N steps as configured; `Trainer.state` /
`restore` make a restarted run continue with the same weights, optimizer, schedule, batches
and random state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from kubetune.contract import TrialConfig
from kubetune_trainer.batching import Batch, BatchSchedule, TokenizedExamples
from kubetune_trainer.errors import TrainingError
from kubetune_trainer.losses import Loss
from kubetune_trainer.model import Encoder, PackedStage
from kubetune_trainer.step import EncodeFn, cached_forward_backward, forward_backward
from kubetune_trainer.sync import GradientBuckets, StagedForward, clip_in_step, gradient_norm
from kubetune_trainer.tracking import LogPoint, Observer


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: 0 -> 1 over the warmup, then 1 -> 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def inductor_options(cuda_graphs: bool) -> dict[str, Any]:
    """Inductor's settings for the trainer's compiled encoder. Without the non-strict mode,
    Inductor fuses a layer norm's two backward reductions (mix-order reduction) only past
    5 Mi values and guards the compiled graph on the token count, so a batch on the other
    side of that line (a two-GPU share at length 256, or one GPU's last, short batch)
    recompiles the whole model mid-run; non-strict, the fusion applies at every size and
    nothing is guarded. A PyTorch without the setting gets the options without it."""
    # imported here: only compiling needs Inductor, and importing it takes about a second
    from torch._inductor import config as inductor_config
    from torch._inductor import list_mode_options

    options = dict(list_mode_options("reduce-overhead")) if cuda_graphs else {}
    if hasattr(inductor_config.triton, "mix_order_reduction_non_strict_mode"):
        options["triton.mix_order_reduction_non_strict_mode"] = True
    return options


def total_steps(config: TrialConfig, train_size: int) -> int:
    hyper = config.hyperparameters
    if hyper.max_steps is not None:
        return hyper.max_steps
    return hyper.epochs * -(-train_size // min(hyper.batch_size, train_size))


@dataclass(frozen=True)
class GradientSync:
    """How several processes average their gradients (DistributedDataParallel).

    `split_graph` lets `torch.compile` cut the compiled model at DDP's gradient buckets, so a
    bucket's all-reduce can start while the backward of earlier layers still runs; without
    it the whole model is one graph and every all-reduce waits for the end of the backward.
    `bf16` sends gradients in bf16, half the bytes of fp32 (averaged in fp32 afterwards);
    it also applies with CUDA graphs, where the trainer averages the gradients itself, without
    DDP (`kubetune_trainer.sync`); there only `bf16`, `overlap`, `first_stage_layers` and
    `compact_embeddings` apply. `overlap` runs a BERT model's forward in two compiled stages so
    that the second stage's gradients are averaged during the first stage's backward; without
    it, all are averaged after the backward. `first_stage_layers` sets the cut (default: a
    sixth of the layers, at least one). `compact_embeddings` sends the word embeddings'
    gradient as the rows of the step's tokens only, the rest being zero everywhere.
    """

    split_graph: bool = True
    bf16: bool = False
    bucket_cap_mb: float = 25.0
    static_graph: bool = False
    overlap: bool = True
    first_stage_layers: int | None = None
    compact_embeddings: bool = True


def _broadcast_from_lead(module: torch.nn.Module) -> None:
    """Give every process rank 0's weights and buffers, as DDP does when it wraps a module
    (LoRA adapters, for one, are drawn from each process's own seed)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor, src=0)


@dataclass(frozen=True)
class TrainOutcome:
    steps: int
    epochs: float
    samples_per_second: float
    train_seconds: float
    resumed_from_step: int | None


class Trainer:
    """Trains `encoder` on `data` for the config's number of steps; `cuda_graphs` None means
    on with several processes on CUDA, off on one."""

    def __init__(
        self,
        config: TrialConfig,
        encoder: Encoder,
        data: TokenizedExamples,
        loss_fn: Loss,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        evaluate: Callable[[], dict[str, float]] | None,
        observer: Observer,
        save_state: Callable[[dict[str, Any]], None] | None,
        gradient_sync: GradientSync = GradientSync(),
        cuda_graphs: bool | None = None,
    ) -> None:
        hyper = config.hyperparameters
        self.gradient_sync = gradient_sync
        self.config = config
        self.encoder = encoder
        self.data = data
        self.loss_fn = loss_fn
        self.device = device
        self.amp_dtype = amp_dtype
        self.evaluate = evaluate
        self.observer = observer
        self.save_state = save_state
        self.schedule = BatchSchedule(len(data), hyper.batch_size, hyper.seed)
        self.total_steps = total_steps(config, len(data))
        self.step = 0
        self.train_seconds = 0.0
        self.samples = 0
        self.resumed_from_step: int | None = None
        distributed = dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.world_size = dist.get_world_size() if distributed else 1
        encoder.freeze_unused()
        self.parameters = {
            name: parameter
            for name, parameter in encoder.named_parameters()
            if parameter.requires_grad
        }
        decay = [p for p in self.parameters.values() if p.ndim >= 2]
        no_decay = [p for p in self.parameters.values() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hyper.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.learning_rate,
            fused=device.type == "cuda",
        )
        warmup = math.ceil(hyper.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(warmup, self.total_steps)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        # a CUDA graph replays one fixed forward and backward per step; gradient caching runs
        # several forwards of varying size per step, so it keeps the dynamic-shape graph
        if cuda_graphs is None:
            cuda_graphs = self.world_size > 1
        self.cuda_graphs = (
            cuda_graphs and device.type == "cuda" and not config.gradient_cache.enabled
        )
        self.buckets: GradientBuckets | None = None
        self.encode = self._training_forward()

    def _training_forward(self) -> EncodeFn:
        """The encoder as the step calls it: compiled on CUDA (on CPU, where tests run,
        compiling would cost more than it saves), with CUDA graphs or DDP-wrapped with
        several processes. With CUDA graphs there is no DDP: its per-parameter hooks would
        bring back the host time the graphs save (`kubetune_trainer.sync` does its work)."""
        module: torch.nn.Module = self.encoder
        sync = self.gradient_sync
        if self.cuda_graphs:
            if self.world_size == 1:
                return torch.compile(module, options=inductor_options(True))  # type: ignore[return-value]
            _broadcast_from_lead(module)
            stages = self.encoder.packed_stages(sync.first_stage_layers) if sync.overlap else None
            compiled = [
                torch.compile(stage, options=inductor_options(True)) for stage in stages or [module]
            ]
            self.buckets = self._buckets(stages)
            return StagedForward(compiled, self.buckets)  # type: ignore[arg-type]
        if self.world_size > 1:
            ddp = torch.nn.parallel.DistributedDataParallel(
                module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
                gradient_as_bucket_view=True,
                bucket_cap_mb=sync.bucket_cap_mb,
                static_graph=sync.static_graph,
            )
            if sync.bf16:
                ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
            torch._dynamo.config.optimize_ddp = sync.split_graph
            module = ddp
        if self.device.type == "cuda":
            return torch.compile(module, options=inductor_options(False))  # type: ignore[return-value]
        return module

    def _buckets(self, stages: list[PackedStage] | None) -> GradientBuckets:
        """One gradient bucket per stage (all parameters in one without stages). The first
        stage's word embeddings, when trained, are sent as the rows of the step's tokens."""
        everything = list(self.parameters.values())
        groups = [everything] if stages is None else [stage.trainable() for stage in stages]
        if sorted(map(id, everything)) != sorted(id(p) for group in groups for p in group):
            raise TrainingError("the packed stages do not hold every trainable parameter once")
        dtype = torch.bfloat16 if self.gradient_sync.bf16 else torch.float32
        rows = None
        if self.gradient_sync.compact_embeddings and stages and stages[0].embeddings is not None:
            word_embeddings = stages[0].embeddings.word_embeddings.weight
            rows = word_embeddings if word_embeddings.requires_grad else None
        return GradientBuckets(groups, dtype, rows)

    def _clip(self, max_norm: float) -> None:
        """Clip gradients to `max_norm` in all, in the optimizer step (`sync.clip_in_step`:
        the fused AdamW step scales them, which saves `clip_grad_norm_`'s pass over them),
        from the gradient buckets' norm where there are buckets. Under a GradScaler (fp16),
        `clip_grad_norm_`: the scaler's step sets the fused step's scale itself."""
        if self.scaler.is_enabled():
            torch.nn.utils.clip_grad_norm_(self.parameters.values(), max_norm)
            return
        grads = [p.grad for p in self.parameters.values() if p.grad is not None]
        norm = self.buckets.norm() if self.buckets is not None else gradient_norm(grads)
        clip_in_step(self.optimizer, grads, norm, max_norm)

    def _random_states(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Every process's random state (CPU, and CUDA where training runs there), by rank:
        each process draws its own dropout masks. A collective: every process calls it."""
        mine = (
            torch.get_rng_state(),
            torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        )
        if self.world_size == 1:
            return [mine]
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        return everyone

    def state(self, random: list[tuple[torch.Tensor, torch.Tensor | None]]) -> dict[str, Any]:
        """Everything needed to continue training from the current step; `random` is every
        process's random state (`_random_states`)."""
        return {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "samples": self.samples,
            "trainable": {name: p.detach().cpu() for name, p in self.parameters.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": [cpu.cpu() for cpu, _ in random],
            "rng_cuda": [None if cuda is None else cuda.cpu() for _, cuda in random],
        }

    def restore(self, state: dict[str, Any]) -> None:
        trainable = state["trainable"]
        if trainable.keys() != self.parameters.keys():
            raise TrainingError("resumable state does not match the model's trainable parameters")
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(trainable[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        # this process's own random state; with more processes than saved it, rank 0's
        rank = self.rank if self.rank < len(state["rng_cpu"]) else 0
        torch.set_rng_state(state["rng_cpu"][rank].cpu())
        cuda = state["rng_cuda"][rank]
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda.cpu(), self.device)
        self.step = self.resumed_from_step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.samples = int(state["samples"])

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _backward(self, batch: Batch) -> torch.Tensor:
        cache = self.config.gradient_cache
        max_length = self.data.max_length
        if cache.enabled:
            return cached_forward_backward(
                self.encode,
                batch,
                self.loss_fn,
                self.amp_dtype,
                self.scaler,
                max_length,
                cache.mini_batch_size,
            )
        if self.cuda_graphs:  # the last step's graph outputs are consumed: reuse their memory
            torch.compiler.cudagraph_mark_step_begin()
        loss = forward_backward(
            self.encode, batch, self.loss_fn, self.amp_dtype, self.scaler, max_length
        )
        if self.buckets is not None:  # the later stages' buckets were launched in the backward
            self.buckets.launch(0, batch.token_rows)
            self.buckets.finish()
        return loss

    def run(self) -> TrainOutcome:
        hyper = self.config.hyperparameters
        total = self.total_steps
        self.encoder.train()
        loss_sum = torch.zeros((), device=self.device)
        window_steps = window_samples = window_tokens = 0
        window_seconds = 0.0
        window_start = time.perf_counter()
        while self.step < total:
            indices = self.schedule.indices(self.step)
            batch = self.data.collate(
                indices, self.rank, self.world_size, self.cuda_graphs, balance=self.cuda_graphs
            )
            batch = batch.to(self.device)
            loss_sum += self._backward(batch)
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)
            if hyper.max_grad_norm is not None:
                self._clip(hyper.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            window_steps += 1
            window_samples += batch.global_examples
            # this process's real tokens times the process count: exact on one GPU
            window_tokens += batch.texts.tokens * self.world_size
            done = self.step
            log_now = done % hyper.log_every_steps == 0 or done == total
            eval_now = hyper.eval_every_steps is not None and done % hyper.eval_every_steps == 0
            # on every process: saving gathers their random states; the lead writes them
            save_now = (
                hyper.checkpoint_every_steps is not None
                and done % hyper.checkpoint_every_steps == 0
                and done < total
            )
            if not (log_now or (eval_now and done < total) or save_now):
                continue
            self._synchronize()
            window_seconds += time.perf_counter() - window_start
            if log_now:
                mean_loss = (loss_sum / window_steps).item()
                if not math.isfinite(mean_loss):
                    raise TrainingError(
                        f"loss is {mean_loss} at step {done}; lower the learning rate or use "
                        "bf16/fp32 precision"
                    )
                self.train_seconds += window_seconds
                self.samples += window_samples
                rate = window_samples / max(window_seconds, 1e-9)
                self.observer.on_log(
                    LogPoint(
                        step=done,
                        total_steps=total,
                        epoch=done / self.schedule.steps_per_epoch,
                        loss=mean_loss,
                        learning_rate=self.scheduler.get_last_lr()[0],
                        samples_per_second=rate,
                        tokens_per_second=window_tokens / max(window_seconds, 1e-9),
                        eta_seconds=(total - done) * window_seconds / window_steps,
                    )
                )
                loss_sum.zero_()
                window_steps = window_samples = window_tokens = 0
                window_seconds = 0.0
            if eval_now and done < total and self.evaluate is not None:
                self.observer.on_eval(done, self.evaluate())
                self.encoder.train()
            if save_now:
                random = self._random_states()
                if self.save_state is not None:
                    self.save_state(self.state(random))
            window_start = time.perf_counter()
        return TrainOutcome(
            steps=self.step,
            epochs=self.step / self.schedule.steps_per_epoch,
            samples_per_second=self.samples / max(self.train_seconds, 1e-9),
            train_seconds=self.train_seconds,
            resumed_from_step=self.resumed_from_step,
        )
