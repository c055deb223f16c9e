"""Deterministic YAML for rendered files: insertion order kept, multi-line strings as literal blocks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as ``|`` blocks and never uses anchors/aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    """One YAML document; keys in the order the renderer built them."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)


def dump_all(objs: Iterable[Any], *, header: str = "") -> str:
    """Several documents separated by ``---``, after an optional comment ``header`` (lines without ``#``)."""
    parts = [f"# {line}".rstrip() + "\n" for line in header.splitlines()] if header else []
    for obj in objs:
        parts.append("---\n" + dump(obj))
    return "".join(parts)
