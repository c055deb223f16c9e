"""YAML/JSON reading that remembers where each value came from and refuses duplicate keys.

PyYAML silently keeps the last of two equal keys; for a config that means a duplicated agent vanishes. This
loader composes the node tree, builds plain Python values from it, and records the 1-based line of every
mapping key and sequence item under its path (a tuple of keys / indices), so validation errors can say
``colo.yaml:14 agents.critic.margin``.
"""

from __future__ import annotations

from typing import Any

import yaml

Path = tuple[str | int, ...]


class DuplicateKeyError(ValueError):
    """A mapping has the same key twice; ``path`` and ``line`` say where the second one is."""

    def __init__(self, key: str, path: Path, line: int, first_line: int) -> None:
        self.key = key
        self.path = path
        self.line = line
        self.first_line = first_line
        super().__init__(f"duplicate key {key!r} (first at line {first_line})")


class _Builder:
    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise ValueError("YAML merge keys ('<<') are not supported in colo files")
                key = self.build(key_node, (*path, "<key>"))
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise ValueError(f"line {key_node.start_mark.line + 1}: mapping keys must be plain values")
                key_text = str(key)
                line = key_node.start_mark.line + 1
                if key_text in first:
                    raise DuplicateKeyError(key_text, (*path, key_text), line, first[key_text])
                first[key_text] = line
                self.lines[(*path, key_text)] = line
                out[key_text] = self.build(value_node, (*path, key_text))
            self.lines.pop((*path, "<key>"), None)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                items.append(self.build(item, (*path, i)))
            return items
        assert isinstance(node, yaml.ScalarNode)
        return self._constructor.construct_object(node, deep=True)


def load_with_lines(text: str) -> tuple[Any, dict[Path, int]]:
    """Parse YAML (JSON is YAML) into plain values and a path -> line map.

    Raises ``yaml.YAMLError`` for syntax errors and :class:`DuplicateKeyError` for repeated keys.
    """
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return None, {}
    builder = _Builder()
    return builder.build(node, ()), builder.lines


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path`` or of its nearest ancestor that has one."""
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return lines.get(())
