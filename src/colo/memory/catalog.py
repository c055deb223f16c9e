"""The architecture catalog: exact Hugging Face configs for models colo knows, as data.

The JSON files in ``colo/memory/catalog/`` map a model id to its ``config.json`` (architecture fields), its
task (encoder | generator | seq2seq) and the transformers head class to build. With them a model is built with
random weights and exact shapes when its weights are not on disk (:mod:`colo.memory.build`), and estimated
without a GPU (:mod:`colo.memory.estimate`).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, cast

from colo.errors import ConfigError

Task = Literal["encoder", "generator", "seq2seq"]
Head = Literal["base", "sequence-classification", "causal-lm", "seq2seq-lm"]
TASKS: tuple[Task, ...] = ("encoder", "generator", "seq2seq")
HEADS: tuple[Head, ...] = ("base", "sequence-classification", "causal-lm", "seq2seq-lm")


class UnknownModelError(ConfigError):
    """A model is neither in the catalog nor on disk with a ``config.json``."""


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog model: its id, task, head class, family and HF config (a fresh copy on each access)."""

    model_id: str
    task: Task
    head: Head
    family: str
    note: str
    config_json: str  # the config as JSON text, so the entry stays immutable

    @property
    def config(self) -> dict[str, Any]:
        """The HF ``config.json`` fields (a new dict each call)."""
        return cast(dict[str, Any], json.loads(self.config_json))


def _entry(model_id: str, raw: dict[str, Any], source: str) -> CatalogEntry:
    task = raw.get("task")
    head = raw.get("head")
    if task not in TASKS or head not in HEADS or not isinstance(raw.get("config"), dict):
        raise ConfigError(
            f"catalog entry {model_id!r} needs task in {TASKS}, head in {HEADS} and a config object",
            source=source,
            field=f"models.{model_id}",
        )
    if "model_type" not in raw["config"]:
        raise ConfigError("catalog config has no model_type", source=source, field=f"models.{model_id}.config")
    return CatalogEntry(
        model_id=model_id,
        task=cast(Task, task),
        head=cast(Head, head),
        family=str(raw.get("family", raw["config"]["model_type"])),
        note=str(raw.get("note", "")),
        config_json=json.dumps(raw["config"], sort_keys=True),
    )


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, CatalogEntry], dict[str, str]]:
    entries: dict[str, CatalogEntry] = {}
    aliases: dict[str, str] = {}
    folder = resources.files("colo.memory").joinpath("catalog")
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if not item.name.endswith(".json"):
            continue
        source = f"colo/memory/catalog/{item.name}"
        try:
            data = json.loads(item.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable catalog file ({exc})", source=source) from exc
        for mid, raw in data.get("models", {}).items():
            if mid in entries:
                raise ConfigError(f"model {mid!r} is in two catalog files", source=source, field=f"models.{mid}")
            entries[mid] = _entry(mid, raw, source)
        aliases.update(data.get("aliases", {}))
    for alias, target in aliases.items():
        if target not in entries:
            raise ConfigError(f"alias {alias!r} points at unknown model {target!r}", field=f"aliases.{alias}")
    return entries, aliases


def canonical_id(model_id: str) -> str:
    """The catalog id for ``model_id`` (aliases such as ``FacebookAI/roberta-base`` resolved)."""
    entries, aliases = _load()
    if model_id in entries:
        return model_id
    return aliases.get(model_id, model_id)


def known_models() -> list[str]:
    """Catalog model ids (aliases excluded), sorted."""
    return sorted(_load()[0])


def find_entry(model_id: str) -> CatalogEntry | None:
    """The catalog entry for ``model_id`` or an alias of it; None when unknown."""
    return _load()[0].get(canonical_id(model_id))


def entry(model_id: str) -> CatalogEntry:
    """The catalog entry for ``model_id``. Raises UnknownModelError naming the model and what to do."""
    found = find_entry(model_id)
    if found is None:
        raise UnknownModelError(
            f"model {model_id!r} is not in colo's architecture catalog",
            field=f"models.{model_id}",
            hint="give `path:` to a local directory with its config.json and weights, or declare `memory:`; "
            "`colo estimate --list` shows the catalog",
        )
    return found


def arch_config(model_id: str) -> dict[str, Any]:
    """The HF config dict of ``model_id`` from the catalog (a fresh copy). Raises UnknownModelError."""
    return copy.deepcopy(entry(model_id).config)


def task_of(model_id: str) -> Task:
    """``"encoder"``, ``"generator"`` or ``"seq2seq"`` for a catalog model. Raises UnknownModelError."""
    return entry(model_id).task


def infer_task(config: dict[str, Any]) -> Task:
    """Task from a config.json found on disk: encoder-decoder → seq2seq, a causal LM → generator."""
    if config.get("is_encoder_decoder"):
        return "seq2seq"
    archs = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "generator"
    return "encoder"


def infer_head(config: dict[str, Any], task: Task) -> Head:
    """Head class from a config.json found on disk and its task."""
    if task == "generator":
        return "causal-lm"
    if task == "seq2seq":
        return "seq2seq-lm"
    archs = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "sequence-classification"
    return "base"
