"""YAML/JSON reading with hard bounds, that remembers where each value came from and refuses duplicate keys.

PyYAML silently keeps the last of two equal keys; for a config that means a duplicated agent vanishes. This
loader composes the node tree, builds plain Python values from it, and records the 1-based line of every
mapping key and sequence item under its path (a tuple of keys / indices), so validation errors can say
``colo.yaml:14 agents.critic.margin``.

Hostile input is refused before it costs anything: one streaming pass over the parser's events (no recursion,
no values built) bounds the nesting depth and counts the nodes the document *expands* to, aliases included —
a 342-byte "billion laughs" file expands to 9⁹ nodes and is refused after reading a few hundred events. An
alias to an anchor that is still open (``a: &l [*l]``) is a recursive alias and refused too.

Scalars are resolved as YAML 1.2's core schema does, not 1.1's: ``yes``/``no``/``on``/``off`` are strings,
``1:30`` is a string (not the sexagesimal 90), ``0755`` is decimal, only ``true``/``false`` are booleans.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

Path = tuple[str | int, ...]

MAX_DEPTH = 64  # nested mappings/sequences; colo.yaml needs about 5
MAX_NODES = 200_000  # nodes after alias expansion; the newsroom example has about 400


class DuplicateKeyError(ValueError):
    """A mapping has the same key twice; ``path`` and ``line`` say where the second one is."""

    def __init__(self, key: str, path: Path, line: int, first_line: int) -> None:
        self.key = key
        self.path = path
        self.line = line
        self.first_line = first_line
        super().__init__(f"duplicate key {key!r} (first at line {first_line})")


class BoundsError(ValueError):
    """The document is too deep, expands to too many nodes, has a recursive alias or invalid text."""

    def __init__(self, message: str, line: int | None, hint: str | None = None) -> None:
        self.line = line
        self.hint = hint
        super().__init__(message)


class _CoreLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema implicit resolution (no 1.1 surprises)."""


_CoreLoader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+.0123456789"),
    ),
):
    _CoreLoader.add_implicit_resolver(_tag, re.compile(_regexp), _first)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)  # "0755" is 755 in YAML 1.2, not octal


_CoreLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def check_bounds(text: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """One pass over the parser's events: refuse deep nesting, alias bombs and recursive aliases.

    Raises :class:`BoundsError` (with the line) or ``yaml.YAMLError`` for a syntax error.
    """
    sizes: dict[str, int] = {}  # anchor -> nodes it expands to (closed anchors only)
    open_anchors: set[str] = set()
    # One frame per open collection: [anchor or None, nodes counted inside it so far].
    stack: list[list[Any]] = []
    total = 0

    def add(count: int, line: int) -> None:
        nonlocal total
        total += count
        if total > max_nodes:
            raise BoundsError(
                f"expands to more than {max_nodes} values (aliases included)", line,
                hint="a colo file needs a few hundred; is this an alias bomb?",
            )
        if stack:
            stack[-1][1] += count

    for event in yaml.parse(text, Loader=_CoreLoader):
        line = event.start_mark.line + 1 if event.start_mark else None
        if isinstance(event, yaml.AliasEvent):
            anchor = str(event.anchor)
            if anchor in open_anchors:
                raise BoundsError(f"recursive alias *{anchor}", line, hint="an anchor cannot contain itself")
            if anchor not in sizes:
                raise BoundsError(f"alias *{anchor} names no anchor", line)
            add(sizes[anchor], line or 0)
        elif isinstance(event, yaml.ScalarEvent):
            add(1, line or 0)
            if event.anchor:
                sizes[str(event.anchor)] = 1
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            add(1, line or 0)
            if len(stack) >= max_depth:
                raise BoundsError(f"nested more than {max_depth} levels deep", line)
            opened = str(event.anchor) if event.anchor else None
            if opened:
                open_anchors.add(opened)
            stack.append([opened, 1])
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            closed, count = stack.pop()
            if stack:
                stack[-1][1] += count - 1  # the start event was already added to the parent
            if closed:
                open_anchors.discard(closed)
                sizes[closed] = count


_SURROGATE = re.compile("[\ud800-\udfff]")


class _Builder:
    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}
        self._constructor = _CoreLoader("")

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
        value = self._constructor.construct_object(node, deep=True)
        if isinstance(value, str) and _SURROGATE.search(value):
            bad = _SURROGATE.search(value)
            code = ord(bad.group()) if bad else 0
            raise BoundsError(
                f"contains a lone surrogate (\\u{code:04x}), which is not a character", node.start_mark.line + 1,
                hint="a \\uD800-\\uDFFF escape must be half of a pair; write the character itself",
            )
        return value


def load_with_lines(text: str) -> tuple[Any, dict[Path, int]]:
    """Parse YAML (JSON is YAML) into plain values and a path -> line map.

    Raises ``yaml.YAMLError`` for syntax errors, :class:`BoundsError` for documents too deep or too large
    once aliases are expanded (or recursive aliases, lone surrogates), :class:`DuplicateKeyError` for
    repeated keys.
    """
    check_bounds(text)
    node = yaml.compose(text, Loader=_CoreLoader)
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
