"""colo.render.yamlout: rendered YAML keeps the renderer's key order, writes multi-line strings as blocks and
never uses anchors."""

from __future__ import annotations

import yaml

from colo.render.yamlout import dump, dump_all


def test_dump_keeps_order_blocks_and_no_aliases() -> None:
    shared = {"x": 1}
    text = dump({"zeta": "a\nb\n", "alpha": [shared, shared]})
    assert text.index("zeta") < text.index("alpha")
    assert "zeta: |\n  a\n  b\n" in text
    assert "&" not in text and "*" not in text
    assert yaml.safe_load(text) == {"zeta": "a\nb\n", "alpha": [{"x": 1}, {"x": 1}]}


def test_dump_all_puts_the_header_as_comments_before_the_documents() -> None:
    text = dump_all([{"a": 1}, {"b": 2}], header="made by colo\n\ndo not edit")
    assert text.startswith("# made by colo\n#\n# do not edit\n---\na: 1\n---\nb: 2\n")
    assert list(yaml.safe_load_all(text)) == [{"a": 1}, {"b": 2}]
    assert dump_all([{"a": 1}]) == "---\na: 1\n"
