"""Build a model as an agent would run it: real weights when they are on disk, else the catalog's exact
architecture with random weights. Never downloads.

Where weights come from, in order:

1. ``path`` (a local directory with ``config.json`` and weights) when given;
2. the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), looked up with ``local_files_only`` — nothing is
   fetched, whatever ``HF_HUB_OFFLINE`` says;
3. otherwise the catalog's config with random weights — "random weights (catalog architecture)". The shapes,
   hence the memory, are exact; the outputs are noise.

``example_inputs`` makes the worst-case inputs (batch × sequence; generators: the prompt) and
``run_worst_case`` runs one worst-case request (a forward pass, or ``generate`` of ``new_tokens`` tokens).

Building random weights fast: the model's class (its ``modeling_*`` module: most of the first build's time) is
imported before the model is built, outside the ``torch.device`` context (:func:`preload` does it alone, for
a launcher that imports before it forks); inside, torch's and transformers' random initialisers are skipped
(each weight used to be filled twice: kaiming-uniform by torch, then normal by transformers) and every weight
they would have filled gets ONE cheap fill (uniform with the config's ``initializer_range`` std, biases
zero). Parameters, buffers, dtypes, devices and tying are exactly those of the plain build, so the memory is.

torch and transformers are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo.errors import ConfigError, ProfileError
from colo.memory import catalog
from colo.memory.catalog import Head, Task

RANDOM_WEIGHTS = "random weights (catalog architecture)"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Bytes per element of each dtype colo builds models in (the estimator's arithmetic uses the same table).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's architecture and weights come from.

    ``weights_dir`` is None for random weights; ``weights`` is ``"local"`` or ``"random"``; ``description`` is
    the line shown to people ("local weights at /models/x", "random weights (catalog architecture)").
    """

    model_id: str
    task: Task
    head: Head
    config_json: str
    weights_dir: str | None
    description: str

    @property
    def weights(self) -> str:
        return "local" if self.weights_dir else "random"

    @property
    def config(self) -> dict[str, Any]:
        """The HF config dict (a new dict each call)."""
        out: dict[str, Any] = json.loads(self.config_json)
        return out


@dataclass(frozen=True)
class BuiltModel:
    """A built model (``module``: a ``torch.nn.Module`` in eval mode) and where it came from."""

    module: Any
    source: ModelSource
    dtype: str
    device: str


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def _read_config(folder: Path, model_id: str) -> dict[str, Any]:
    cfg_path = folder / "config.json"
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the config of model {model_id!r} ({exc})",
            source=str(cfg_path),
            hint="the directory must hold a Hugging Face config.json",
        ) from exc
    if not isinstance(data, dict) or "model_type" not in data:
        raise ConfigError(f"config of model {model_id!r} has no model_type", source=str(cfg_path))
    return data


def cached_snapshot(model_id: str) -> Path | None:
    """The HF-cache snapshot folder of ``model_id`` with config.json and weights, or None. No network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return None
    try:
        found = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # an id that is not a valid repo name: not in the cache
        return None
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    return folder if _has_weights(folder) else None


def resolve_source(model_id: str, *, path: str | None = None, random_weights: bool | None = None) -> ModelSource:
    """Decide where ``model_id`` comes from (see the module docstring).

    ``random_weights``: None = real weights when present, else random; True = always random (catalog or the
    local config); False = real weights required.

    Raises ConfigError for a ``path`` that is missing or has no config.json, UnknownModelError for a model
    with neither weights nor a catalog entry, ProfileError when real weights were required but are absent.
    """
    folder: Path | None = None
    if path is not None:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"model {model_id!r}: {folder} has no config.json",
                field=f"models.{model_id}.path",
                hint="point `path:` at a directory saved with save_pretrained()",
            )
    elif random_weights is not True:
        folder = cached_snapshot(model_id)

    have_weights = folder is not None and _has_weights(folder)
    if random_weights is False and not have_weights:
        raise ProfileError(
            f"model {model_id!r} has no local weights",
            hint="give `path:` to a directory with the weights, or allow random weights",
        )
    if folder is not None:
        cfg = _read_config(folder, model_id)
        task = catalog.infer_task(cfg)
        head = catalog.infer_head(cfg, task)
        known = catalog.find_entry(model_id)
        if known is not None:  # the catalog knows the role the newsroom gives the model
            task, head = known.task, known.head
        use_weights = have_weights and random_weights is not True
        desc = f"local weights at {folder}" if use_weights else f"random weights (config at {folder})"
        return ModelSource(
            model_id, task, head, json.dumps(cfg, sort_keys=True), str(folder) if use_weights else None, desc
        )
    ent = catalog.entry(model_id)
    return ModelSource(model_id, ent.task, ent.head, ent.config_json, None, RANDOM_WEIGHTS)


def torch_dtype(name: str) -> Any:
    """``"float32"`` → ``torch.float32``. Raises ConfigError for another name."""
    import torch

    if name not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {name!r}", hint=f"use one of {', '.join(DTYPE_BYTES)}")
    return getattr(torch, name)


def _auto_class(head: Head) -> Any:
    import transformers

    return {
        "base": transformers.AutoModel,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
        "seq2seq-lm": transformers.AutoModelForSeq2SeqLM,
    }[head]


def hf_config(source: ModelSource) -> Any:
    """A ``transformers.PretrainedConfig`` for ``source`` (from its dict; no file access)."""
    import transformers

    cfg = source.config
    model_type = cfg.pop("model_type")
    for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        cfg.pop(key, None)
    try:
        return transformers.AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"transformers cannot build a {model_type!r} config for {source.model_id!r} ({exc})",
            hint="upgrade transformers, or give a local `path:` whose config this version reads",
        ) from exc


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' info/warning chatter (random-init notices) and its progress bars ("Loading
    weights") while building. A progress bar is not only noise in an agent's log: tqdm starts a monitor thread,
    and a pre-forking launcher that loaded weights with one running could never fork again."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(logging.ERROR)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _model_class(auto_cls: Any, config: Any) -> Any:
    """The concrete class ``auto_cls.from_config(config)`` builds; importing it imports its modeling module."""
    from transformers.models.auto.auto_factory import _get_model_class

    return _get_model_class(config, auto_cls._model_mapping)  # type: ignore[no-untyped-call]


def preload(model_id: str, *, path: str | None = None) -> None:
    """Import everything building ``model_id`` needs (torch, transformers, its modeling module) without
    touching CUDA or allocating weights. Raises what :func:`resolve_source` and :func:`hf_config` raise, and
    transformers' error for an architecture it does not know."""
    import torch  # noqa: F401

    source = resolve_source(model_id, path=path)
    with _quiet_transformers():
        _model_class(_auto_class(source.head), hf_config(source))


# torch.nn.init's random initialisers (they dispatch through torch-function modes) and the Tensor methods.
_RANDOM_INITS = (
    "uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
    "xavier_normal_", "orthogonal_", "sparse_",
)
_RANDOM_FILLS = ("uniform_", "normal_")
_INIT_MODULES = ("torch.nn.init", "transformers.initialization")


@contextmanager
def _skip_random_init() -> Iterator[set[int]]:
    """Within: torch.nn.init's random initialisers and ``Tensor.uniform_`` / ``normal_`` do nothing (torch's and
    transformers' initialisers all go through them). Yields the data pointers they were asked to fill, for
    :func:`_fill_skipped`."""
    import torch
    from torch.overrides import TorchFunctionMode

    skipped: set[int] = set()
    methods = {getattr(torch.Tensor, name) for name in _RANDOM_FILLS}

    def is_random_fill(func: Any) -> bool:
        # By name: transformers swaps torch.nn.init's functions for guarded copies while it builds a model.
        if func in methods:
            return True
        return getattr(func, "__name__", "") in _RANDOM_INITS and getattr(func, "__module__", "") in _INIT_MODULES

    class SkipRandomFills(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
        ) -> Any:
            kwargs = kwargs or {}
            if is_random_fill(func):
                # torch.nn.init passes the tensor as a keyword when it dispatches; Tensor methods as args[0].
                tensor = args[0] if args else kwargs.get("tensor")
                if isinstance(tensor, torch.Tensor):
                    if tensor.device.type != "meta":
                        skipped.add(tensor.data_ptr())
                    return tensor
            return func(*args, **kwargs)

    with SkipRandomFills():
        yield skipped


def _fill_skipped(module: Any, skipped: set[int], std: float) -> None:
    """Fill every parameter and buffer whose random init was skipped: uniform with standard deviation ``std``
    (matrices, embeddings) or zeros (vectors: biases). Tied weights are filled once.

    On CPU most of what is left is the first touch of fresh pages (any fill pays it), not the random numbers.
    """
    import torch

    bound = std * 3.0**0.5  # U(-b, b) has standard deviation b / sqrt(3)
    done: set[int] = set()
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            ptr = tensor.data_ptr()
            if ptr not in skipped or ptr in done or not tensor.is_floating_point():
                continue
            done.add(ptr)
            if tensor.dim() < 2:
                tensor.zero_()
            else:
                tensor.uniform_(-bound, bound)


def _init_std(config: Any) -> float:
    for name in ("initializer_range", "init_std"):
        value = getattr(config, name, None)
        if isinstance(value, int | float) and 0 < value < 1:
            return float(value)
    return 0.02


def build(
    model_id: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    path: str | None = None,
    random_weights: bool | None = None,
) -> BuiltModel:
    """Build ``model_id`` in ``dtype`` on ``device`` (``"cpu"``, ``"cuda:0"``, ``"meta"``), in eval mode.

    Random weights are created directly on ``device`` (no CPU copy) and filled once, cheaply (see the module
    docstring); real weights are loaded with
    ``local_files_only`` and moved. On ``"meta"`` nothing is allocated: use it to count parameters.
    Raises ConfigError / UnknownModelError / ProfileError (see :func:`resolve_source`).
    """
    import torch

    source = resolve_source(model_id, path=path, random_weights=random_weights)
    tdtype = torch_dtype(dtype)
    cls = _auto_class(source.head)
    with _quiet_transformers():
        if source.weights_dir is not None and device != "meta":
            try:
                module = cls.from_pretrained(source.weights_dir, dtype=tdtype, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ProfileError(
                    f"cannot load weights of {model_id!r} from {source.weights_dir} ({exc})",
                    hint="check the directory, or use random weights (--random-weights)",
                ) from exc
            module = module.to(device)
        else:
            config = hf_config(source)
            _model_class(cls, config)  # its modeling module is imported here, not under the device context
            with torch.device(device), _skip_random_init() as skipped:
                module = cls.from_config(config, dtype=tdtype)
            if device != "meta":
                _fill_skipped(module, skipped, _init_std(config))
    module.eval()
    return BuiltModel(module=module, source=source, dtype=dtype, device=device)


# Models built once in a pre-forking launcher (:func:`prebuild`), inherited copy-on-write by its forked agents
# (:func:`take_prebuilt`). Keyed by (model id, dtype, path).
_PrebuiltKey = tuple[str, str, str | None]
_prebuilt: dict[_PrebuiltKey, BuiltModel] = {}


def model_bytes(built: BuiltModel) -> int:
    """Bytes of a built model's parameters and buffers (tied tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*built.module.parameters(), *built.module.buffers()]:
        key = id(tensor) if tensor.device.type == "meta" else tensor.data_ptr()
        if key not in seen:
            seen.add(key)
            total += int(tensor.numel()) * int(tensor.element_size())
    return total


def prebuild(model_id: str, *, dtype: str = "float32", path: str | None = None, max_bytes: int) -> int:
    """Build ``model_id`` on the CPU once, as :func:`build` would (same source, dtype, architecture), and keep
    it for :func:`take_prebuilt` in processes forked after this; the bytes it holds (0 if it was built
    already). A model whose parameters and buffers pass ``max_bytes`` is not built (ProfileError says so);
    build errors are raised as :func:`build` raises them. Call it with torch single-threaded in a process
    that forks: filling weights with several threads starts a thread pool."""
    key = (model_id, dtype, path)
    if key in _prebuilt:
        return 0
    size = model_bytes(build(model_id, dtype=dtype, device="meta", path=path))
    if size > max_bytes:
        raise ProfileError(
            f"{model_id} ({size >> 20} MiB in {dtype}) is larger than the {max_bytes >> 20} MiB a launcher"
            " prebuilds; its agents build it themselves"
        )
    _prebuilt[key] = build(model_id, dtype=dtype, device="cpu", path=path)
    return size


def keep_prebuilt(keys: set[tuple[str, str, str | None]]) -> None:
    """Drop every prebuilt model whose (model id, dtype, path) is not in ``keys`` (a new config's)."""
    for key in list(_prebuilt):
        if key not in keys:
            del _prebuilt[key]


def take_prebuilt(model_id: str, *, dtype: str, device: str, path: str | None = None) -> BuiltModel | None:
    """The model :func:`prebuild` built for (``model_id``, ``dtype``, ``path``), moved to ``device``, or None.
    Taken once: this process holds no CPU copy of it afterwards (a forked child shares the launcher's pages
    until then, and copies none of them to move it)."""
    built = _prebuilt.pop((model_id, dtype, path), None)
    if built is None:
        return None
    if device != "cpu":
        built.module.to(device)
    return BuiltModel(module=built.module, source=built.source, dtype=dtype, device=device)


def _token_range(cfg: dict[str, Any]) -> tuple[int, int]:
    vocab = int(cfg.get("vocab_size", 1000))
    # Stay clear of special ids at the bottom (pad, bos, eos, unk) so positions and masks behave as real text.
    low = min(5, max(vocab - 1, 0))
    return low, vocab


def example_inputs(
    model_id: str,
    batch_size: int,
    seq_len: int,
    device: str = "cpu",
    *,
    source: ModelSource | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Worst-case inputs for one request: ``input_ids`` and ``attention_mask`` of ``batch_size × seq_len``
    (int64, all tokens real), plus ``token_type_ids`` for models with token types. For generators and seq2seq
    models ``seq_len`` is the prompt. Raises UnknownModelError for a model colo cannot resolve.
    """
    import torch

    src = source or resolve_source(model_id)
    cfg = src.config
    low, high = _token_range(cfg)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (batch_size, seq_len), generator=gen, dtype=torch.long)
    inputs: dict[str, Any] = {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
    }
    if src.task == "encoder" and int(cfg.get("type_vocab_size", 0) or 0) > 1:
        inputs["token_type_ids"] = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
    return inputs


def max_positions(source: ModelSource) -> int | None:
    """The longest sequence the architecture accepts (None when unbounded, e.g. T5's relative positions)."""
    cfg = source.config
    for key in ("max_position_embeddings", "n_positions"):
        if cfg.get(key):
            value = int(cfg[key])
            # RoBERTa-style models offset positions by pad_token_id + 1 (514 positions → 512 tokens).
            if cfg.get("model_type") in ("roberta", "mpnet", "xlm-roberta", "camembert"):
                value -= int(cfg.get("pad_token_id", 1)) + 1
            return value
    return None


def check_shape(source: ModelSource, seq_len: int, new_tokens: int) -> None:
    """Raise ConfigError when the worst case is longer than the architecture allows."""
    limit = max_positions(source)
    total = seq_len + (new_tokens if source.task == "generator" else 0)
    if limit is not None and total > limit:
        raise ConfigError(
            f"model {source.model_id!r}: {total} tokens exceed its {limit} positions",
            field=f"models.{source.model_id}.max_seq_len",
            hint=f"lower max_seq_len (and new_tokens) to at most {limit} tokens in all",
        )


def run_worst_case(built: BuiltModel, batch_size: int, seq_len: int, new_tokens: int = 0, *, seed: int = 0) -> int:
    """Run one worst-case request under ``torch.inference_mode``; return the number of output tokens.

    Encoders: one forward of ``batch_size × seq_len``. Generators and seq2seq: greedy ``generate`` of exactly
    ``new_tokens`` tokens after a ``seq_len`` prompt (end-of-sequence ignored so random weights run the full
    length). Raises ConfigError for a shape the architecture does not accept.
    """
    import torch

    check_shape(built.source, seq_len, new_tokens)
    inputs = example_inputs(built.source.model_id, batch_size, seq_len, built.device, source=built.source, seed=seed)
    with torch.inference_mode(), _quiet_transformers():
        if built.source.task == "encoder" or new_tokens <= 0:
            if built.source.task == "seq2seq":
                start = torch.zeros(batch_size, 1, dtype=torch.long, device=built.device)
                built.module(**inputs, decoder_input_ids=start)
            else:
                built.module(**inputs)
            return batch_size * seq_len
        cfg = built.source.config
        pad = cfg.get("pad_token_id")
        if pad is None:
            pad = cfg.get("eos_token_id") or 0
        out = built.module.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=int(pad if not isinstance(pad, list) else pad[0]),
        )
        # A causal LM returns prompt + new tokens; a seq2seq model the decoder start token + new tokens.
        prefix = seq_len if built.source.task == "generator" else 1
        return int(out.shape[0] * (out.shape[1] - prefix))
