"""colo.yaml documents of the newsroom for tests, imported as ``newsroom_doc``: the same agents on other ports
(:func:`moved_ports`), and two newsrooms in one config for two GPUs (:func:`two_newsrooms`, issue 23).

Pure: a document (the parsed YAML, a dict) in, a new document out; the source is never changed. The GPU suite
(``tests/gpu/newsroom.py``) and the CPU tests (``tests/unit/supervise/test_supervise_planning_two_gpus.py``)
both build their configs here; ``tests/`` is on ``sys.path`` as for ``testkit``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

#: The copy of agent ``x`` in :func:`two_newsrooms` is ``x_b``, on ``x``'s port + 100.
COPY_SUFFIX = "_b"
COPY_PORT_OFFSET = 100


def moved_ports(doc: Mapping[str, Any], offset: int) -> dict[str, Any]:
    """A copy of a colo.yaml document with every agent's ``port`` and its health URL's port moved by
    ``offset``. Raises ValueError for an agent without a port or with a health URL on another port."""
    new: dict[str, Any] = copy.deepcopy(dict(doc))
    for name, agent in new["agents"].items():
        if "port" not in agent:
            raise ValueError(f"agent {name} has no port to move")
        old = int(agent["port"])
        agent["port"] = old + offset
        health = agent.get("health") or {}
        url = health.get("url")
        if url is not None:
            if f":{old}/" not in url:
                raise ValueError(f"agent {name}: health URL {url} is not on its port {old}")
            health["url"] = url.replace(f":{old}/", f":{old + offset}/")
    return new


def two_newsrooms(
    doc: Mapping[str, Any], *, suffix: str = COPY_SUFFIX, port_offset: int = COPY_PORT_OFFSET
) -> dict[str, Any]:
    """Two newsrooms in one document, for two GPUs: every agent of ``doc`` as it is, and a copy named
    ``<name><suffix>`` on its port + ``port_offset`` (health URL moved too); ``gpus: auto`` and
    ``policy.placement: spread``. The models and the rest of the policy are ``doc``'s.

    ``gpus: auto``: the GPUs NVML sees where ``colo plan``/``colo up`` run, as issue 23 asks. ``spread``,
    because of the sized newsroom's numbers: its nine limits add up to 36.75 GiB, so eighteen need 73.5 GiB,
    which fits one 80 GiB GPU — ``binpack`` (best fit) would put all eighteen on GPU 0 and leave GPU 1 idle.
    ``spread`` gives each agent the GPU with the most free room (ties to the first): an agent and its copy
    have the same limit and come one after the other in placement order, so on two equal GPUs the originals
    land on GPU 0 and the copies on GPU 1.

    Raises ValueError when a copy's name or port is already an agent's (or from :func:`moved_ports`).
    """
    copies = moved_ports(doc, port_offset)["agents"]
    new: dict[str, Any] = copy.deepcopy(dict(doc))
    agents: dict[str, Any] = new["agents"]
    ports = {int(a["port"]) for a in agents.values()}
    for name, agent in copies.items():
        twin = f"{name}{suffix}"
        if twin in agents:
            raise ValueError(f"the copy of {name} would be {twin}, already an agent")
        if int(agent["port"]) in ports:
            raise ValueError(f"the copy of {name} would take port {agent['port']}, already an agent's")
        ports.add(int(agent["port"]))
    agents.update({f"{name}{suffix}": agent for name, agent in copies.items()})
    new["gpus"] = "auto"
    new["policy"] = {**(new.get("policy") or {}), "placement": "spread"}
    return new
