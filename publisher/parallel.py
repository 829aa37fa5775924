"""How evaluation spreads over the GPUs present: `publish.eval.parallel: auto | N`.

A pure function of the setting, the backend, the GPU count and (when known) the model's size,
each GPU's memory and the model's attention heads, so it is tested without GPUs:

- No GPU: one process, no parallelism.
- `N` GPUs are used (`auto`: all of them; `N` more than present is an error).
- A model copy is split over `tensor_parallel` GPUs: the fewest that hold its weights with
  `HEADROOM` to spare (KV cache, activations), among the divisors of `N` that also divide the
  attention heads (vLLM splits heads across GPUs). Unknown sizes: one GPU per copy.
- The rest is data parallelism: `N / tensor_parallel` copies, each evaluating its share.

How the backends take it: vLLM gets `tensor_parallel_size` and `data_parallel_size`; the `hf`
backend runs `data_parallel` processes under `accelerate launch`, each with
`parallelize=True` when a copy spans several GPUs (lm-eval's documented way to combine the two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from publisher.errors import PublisherError

HEADROOM = 1.25  # weights x this must fit on the GPUs one copy uses
Parallel = Literal["auto"] | int


class ParallelError(PublisherError):
    """`publish.eval.parallel` asks for what the machine does not have."""


@dataclass(frozen=True)
class EvalParallelism:
    """The chosen layout.

    Attributes:
        gpus: GPUs used, e.g. 8 (0: CPU).
        tensor_parallel: GPUs one model copy is split over, e.g. 4.
        data_parallel: model copies evaluating in parallel, e.g. 2 (`gpus` = the product).
    """

    gpus: int = 0
    tensor_parallel: int = 1
    data_parallel: int = 1

    def model_args(self, backend: str) -> dict[str, Any]:
        """What lm-eval's `model_args` gain for `backend` (`"vllm"` or `"hf"`)."""
        if self.gpus <= 1:
            return {}
        if backend == "vllm":
            return {
                "tensor_parallel_size": self.tensor_parallel,
                "data_parallel_size": self.data_parallel,
            }
        return {"parallelize": True} if self.tensor_parallel > 1 else {}

    def processes(self, backend: str) -> int:
        """Processes to launch with `accelerate launch` (hf), 1 when none is needed."""
        return self.data_parallel if backend == "hf" and self.gpus > 1 else 1

    def describe(self) -> str:
        if self.gpus == 0:
            return "CPU"
        return (
            f"{self.gpus} GPU(s): {self.data_parallel} copy(ies) x "
            f"{self.tensor_parallel} GPU(s) each"
        )


def choose_parallelism(
    parallel: Parallel,
    gpu_count: int,
    *,
    model_bytes: int | None = None,
    gpu_memory_bytes: int | None = None,
    attention_heads: int | None = None,
) -> EvalParallelism:
    """The layout for `parallel` on `gpu_count` GPUs (see the module docstring)."""
    if gpu_count <= 0:
        return EvalParallelism()
    used = gpu_count if parallel == "auto" else int(parallel)
    if used < 1:
        raise ParallelError(f"publish.eval.parallel must be auto or a number of GPUs, not {used}")
    if used > gpu_count:
        raise ParallelError(
            f"publish.eval.parallel is {used} but this machine has {gpu_count} GPU(s): use auto, "
            f"at most {gpu_count}, or a flavor with more GPUs"
        )
    need = 1
    if model_bytes and gpu_memory_bytes:
        need = math.ceil(model_bytes * HEADROOM / gpu_memory_bytes)
    splits = [
        d
        for d in range(1, used + 1)
        if used % d == 0 and (not attention_heads or attention_heads % d == 0)
    ]
    fitting = [d for d in splits if d >= need]
    tensor = fitting[0] if fitting else splits[-1]  # too big for all of them: spread the most
    return EvalParallelism(gpus=used, tensor_parallel=tensor, data_parallel=used // tensor)


def detect(model_dir: Any) -> dict[str, int | None]:
    """GPU count, one GPU's memory, the model's weight bytes and attention heads, for
    `choose_parallelism` (keyword arguments besides `gpu_count`)."""
    import json
    from pathlib import Path

    import torch

    model_dir = Path(model_dir)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    memory = torch.cuda.get_device_properties(0).total_memory if count else None
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    return {
        "gpu_count": count,
        "gpu_memory_bytes": memory,
        "model_bytes": weights or None,
        "attention_heads": config.get("num_attention_heads"),
    }
