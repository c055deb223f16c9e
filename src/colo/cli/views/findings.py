"""Findings for a person: one line per cause, naming every agent (or field) it concerns, errors first, then one
line that says what to do. ``--json`` keeps every finding as it is; only this human view groups.

A cause is what a finding says (its severity and message): the same model's worst case above its declared
``memory`` is one cause whichever agents serve that model, so the seed newsroom's MiniLM finding is one line
naming ``memory, newsreader`` rather than one line per agent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.console import Console

from colo.cli.common import safe


@dataclass(frozen=True)
class FindingGroup:
    """Findings that say the same thing: ``subjects`` are the agents (or field paths) it was said about, in
    the order first seen; ``topic`` is the finding's topic (``memory``, ``margin``, …)."""

    severity: str
    topic: str
    message: str
    subjects: tuple[str, ...]


def group_findings(findings: Iterable[tuple[str, str, str, str]]) -> list[FindingGroup]:
    """``(severity, topic, subject, message)`` rows as groups of equal (severity, topic, message): errors
    first, ``memory`` (what runs out) before the other topics, otherwise in the order first seen."""
    subjects: dict[tuple[str, str, str], list[str]] = {}
    for severity, topic, subject, message in findings:
        named = subjects.setdefault((severity, topic, message), [])
        if subject not in named:
            named.append(subject)
    groups = [FindingGroup(sev, topic, msg, tuple(names)) for (sev, topic, msg), names in subjects.items()]
    return sorted(groups, key=lambda g: (g.severity != "error", g.topic != "memory"))  # stable: first seen


def field_finding_row(severity: str, where: str, message: str) -> tuple[str, str, str, str]:
    """A ``colo validate`` finding (``where`` a field path such as ``agents.critic.margin``) as a row for
    :func:`group_findings`: the topic is the path's last part."""
    return severity, where.rsplit(".", 1)[-1], where, message


def _advice(groups: Sequence[FindingGroup], config_path: str) -> str | None:
    """The one line that says what to do about ``groups``, when colo knows a remedy for their topics."""
    todo: list[str] = []
    topics = {g.topic for g in groups}
    if "memory" in topics:
        todo.append(
            f"raise the `memory` of the models named above in {safe(config_path)}, or measure them on a GPU "
            "(`colo profile`) and plan with --from-db"
        )
    if "margin" in topics:
        agents = sorted({a.split(".")[1] if a.startswith("agents.") else a for g in groups if g.topic == "margin" for a in g.subjects})
        todo.append(f"give {safe(', '.join(agents))} a `margin` of at least the policy's (or none: the policy's applies)")
    if not todo:
        return None
    refusal = (
        "; `colo up` refuses the plan while an agent is predicted to run out of memory (--force runs it anyway)"
        if any(g.severity == "error" and g.topic == "memory" for g in groups)
        else ""
    )
    return f"[bold]to do:[/] {'; '.join(todo)}{refusal}; `--json` lists every finding per agent"


def print_findings(
    console: Console,
    groups: Sequence[FindingGroup],
    *,
    config_path: str,
    prefix: str = "",
    subject_label: tuple[str, str] = ("agent", "agents"),
) -> None:
    """One line per group (``error: <prefix><message> (agents: a, b)``), then the line saying what to do.
    ``subject_label`` names the subjects, singular and plural (``colo validate``'s are field paths: "at")."""
    for g in groups:
        colour = "red" if g.severity == "error" else "yellow"
        who = subject_label[0] if len(g.subjects) == 1 else subject_label[1]
        console.print(
            f"[{colour}]{g.severity}:[/] {safe(prefix)}{safe(g.message)} [dim]({who}: {safe(', '.join(g.subjects))})[/]",
            highlight=False, soft_wrap=True,
        )
    advice = _advice(groups, config_path) if groups else None
    if advice:
        console.print(advice, highlight=False, soft_wrap=True)
