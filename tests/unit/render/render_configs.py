"""Small colo.yaml files for the render tests (imported by the test modules of this folder)."""

from __future__ import annotations

from pathlib import Path

NODE_A = "  - {node: node-a, name: NVIDIA H100 80GB HBM3, memory: 80GiB, count: 2}\n"
NODE_B = "  - {node: node-b, name: NVIDIA H100 80GB HBM3, memory: 80GiB, count: 2}\n"

TEMPLATE = """\
version: 1
gpus:
{gpus}policy: {{margin: "50%, at least 512MiB", placement: spread}}
models:
  small: {{memory: 1GiB}}
  big: {{memory: 10GiB}}
agents:
{agents}
"""


def write_config(path: Path, agents: list[str], *, gpus: str = NODE_A + NODE_B) -> Path:
    """Write a colo.yaml with ``agents`` (one YAML line each, without indentation) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATE.format(gpus=gpus, agents="\n".join(f"  {a}" for a in agents)))
    return path


def uniform(path: Path) -> Path:
    """Eight agents asking the same on two nodes: what NVIDIA's device plugin can express."""
    return write_config(path, [f"worker-{i}: {{models: [small], port: 8000}}" for i in range(8)])


def mixed(path: Path, *, gpus: str = NODE_A + NODE_B) -> Path:
    """Unequal limits, mixed priorities, a name with '_', a custom command with a tcp health check."""
    return write_config(
        path,
        [
            "chief_editor: {models: [big], priority: high, port: 8000}",
            "analyst: {models: [small], priority: low, port: 8000}",
            "custom: {models: [small], command: [python3, serve.py, --name, 'a b'], health: {type: tcp, port: 9000}}",
        ],
        gpus=gpus,
    )
