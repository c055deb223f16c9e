"""Encoder inference: any catalog model at a fixed batch × sequence length, CUDA-graph captured.

One request is one forward pass over ``batch_size`` sequences of ``seq_len`` tokens, synchronised with the
GPU; throughput is counted in sequences. The model comes from :func:`colo.memory.build.build` (real
weights when present locally, else the exact architecture with random weights — speed does not depend on the
values). With several ``models`` (an agent with more than one), one request runs each model once. For a
seq2seq model a forward is its encoder over the input plus one decoder step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from colo.bench.loads.base import RequestOutcome
from colo.bench.loads.graphs import capture, resolve_device, torch_dtype, torch_facts


@dataclass
class EncoderWorkload:
    """Forward passes of ``model`` (or each of ``models``) at ``batch_size`` × ``seq_len``. Raises ValueError
    without a model or with a non-positive size."""

    unit: ClassVar[str] = "seq"

    model: str = ""
    models: list[str] | None = None
    batch_size: int = 8
    seq_len: int = 128
    dtype: str = "float16"
    device: str = "auto"
    cuda_graphs: bool = True
    path: str | None = None
    _steps: list[Any] = field(default_factory=list, init=False, repr=False)
    _sync: Any = field(default=None, init=False, repr=False)
    _info: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model_ids = list(self.models or ([self.model] if self.model else []))
        if not self.model_ids:
            raise ValueError("encoder workload needs a model (or models)")
        if self.batch_size < 1 or self.seq_len < 1:
            raise ValueError(f"batch_size {self.batch_size} and seq_len {self.seq_len} must be positive")

    def prepare(self) -> dict[str, Any]:
        import torch

        from colo.memory.build import build, example_inputs

        device = resolve_device(self.device)
        dtype = self.dtype if device != "cpu" else "float32"
        torch_dtype(dtype)  # validate early
        graphs_used: list[bool] = []
        for model_id in self.model_ids:
            module = build(model_id, dtype=dtype, device=device, path=self.path).module
            module.eval()
            inputs = example_inputs(model_id, self.batch_size, self.seq_len, device)
            if getattr(module.config, "is_encoder_decoder", False):
                # seq2seq: the encoder over the input plus one decoder step
                inputs["decoder_input_ids"] = torch.zeros(self.batch_size, 1, dtype=torch.long, device=device)

            def forward(module: Any = module, inputs: Any = inputs) -> Any:
                with torch.inference_mode():
                    return module(**inputs)

            step: Any = forward
            captured = None
            if device.startswith("cuda") and self.cuda_graphs:
                captured = capture(forward)
                if captured is None and "attention_mask" in inputs:
                    # The mask is all ones; some model code inspects it on the host, which capture forbids.
                    unmasked = {k: v for k, v in inputs.items() if k != "attention_mask"}

                    def forward_unmasked(module: Any = module, inputs: Any = unmasked) -> Any:
                        with torch.inference_mode():
                            return module(**inputs)

                    captured = capture(forward_unmasked)
            if captured is not None:
                step = captured[0].replay
            else:
                for _ in range(2):
                    forward()
            graphs_used.append(captured is not None)
            self._steps.append((module, inputs, step, captured))
        self._sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        for _ in range(3):  # untimed: the first replays of a fresh graph are slower
            self.request()
        self._info = {
            **torch_facts(),
            "models": self.model_ids,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "dtype": dtype,
            "cuda_graphs": all(graphs_used),
            "cuda_graphs_per_model": graphs_used,
        }
        return self._info

    def request(self) -> RequestOutcome:
        for _module, _inputs, step, _captured in self._steps:
            step()
        self._sync()
        return RequestOutcome(float(self.batch_size))

    def close(self) -> None:
        self._steps.clear()
