"""How fast the GPUs of this machine all-reduce a model's gradients, through NCCL.

Why: data-parallel training pays one all-reduce of every gradient per step; whether that
can hide behind the backward depends on how long it takes. This times, under
`torchrun --nproc-per-node N`, all-reduces of the gradient sizes of the two bench models
(all-MiniLM-L6-v2, 22.7M parameters; BERT-base, 109.5M) in fp32 and bf16, and the
all-gather of one step's embeddings, and prints the median time and the bus bandwidth
(bytes x 2(N-1)/N per second, NCCL's convention) on rank 0.

    torchrun --nproc-per-node 2 bench/allreduce_speed.py
"""

from __future__ import annotations

import os
import statistics

import torch
import torch.distributed as dist

SIZES = {"minilm": 22_713_216, "bert-base": 109_482_240}
"""Parameters of the two bench models (all trainable in full fine-tuning)."""


def timed(operation: object, repeats: int = 20) -> float:
    """Median seconds of `operation()` over `repeats`, after 3 warm-ups."""
    times = []
    for index in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        operation()  # type: ignore[operator]
        end.record()
        end.synchronize()
        if index >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    factor = 2 * (world - 1) / world
    for name, count in SIZES.items():
        for dtype in (torch.float32, torch.bfloat16):
            buffer = torch.randn(count, device=device, dtype=dtype)
            seconds = timed(lambda buffer=buffer: dist.all_reduce(buffer))
            size = buffer.numel() * buffer.element_size()
            if rank == 0:
                print(
                    f"all_reduce {name} {str(dtype)[6:]}: {size / 1e6:.0f} MB in "
                    f"{seconds * 1e3:.2f} ms, bus {size * factor / seconds / 1e9:.0f} GB/s"
                )
    embeddings = torch.randn(256, 768, device=device)
    parts = [torch.empty_like(embeddings) for _ in range(world)]
    seconds = timed(lambda: dist.all_gather(parts, embeddings))
    if rank == 0:
        print(f"all_gather of 256 x 768 fp32 embeddings per rank: {seconds * 1e6:.0f} us")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
