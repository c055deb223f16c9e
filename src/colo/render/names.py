"""Kubernetes names: validation, and the deterministic conversion of colo's names into them.

colo's agent names allow ``[A-Za-z0-9_.-]`` (``chief_editor``); the Kubernetes object names used here must
be RFC 1035 labels (Service names are): lowercase letters, digits and ``-``, starting with a letter and
ending with a letter or digit, at most 63 characters. :func:`agent_object_names` converts every agent name
the same way every time (lowercase, ``_`` and ``.`` become ``-``) and refuses, naming the agent, a name that
cannot be converted or two names that convert to the same label. Node names are never converted: they must
already be the names the cluster knows (RFC 1123 subdomains), because a pod is pinned to a node by that
exact name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from colo.errors import ConfigError, UsageError

DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Label values: empty, or alphanumeric at both ends with '-', '_', '.' between; at most 63.
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Label keys: optional DNS-subdomain prefix and '/', then a name like a label value (non-empty).
_LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def is_dns_label(text: str) -> bool:
    """True when ``text`` is an RFC 1123 label (Kubernetes object names such as Deployments, Services)."""
    return len(text) <= DNS_LABEL_MAX and bool(_DNS_LABEL_RE.match(text))


def is_dns_subdomain(text: str) -> bool:
    """True when ``text`` is an RFC 1123 subdomain (Kubernetes node names, ConfigMap names)."""
    return len(text) <= DNS_SUBDOMAIN_MAX and bool(_DNS_SUBDOMAIN_RE.match(text))


def is_label_value(text: str) -> bool:
    """True when ``text`` may be a Kubernetes label value."""
    return len(text) <= DNS_LABEL_MAX and bool(_LABEL_VALUE_RE.match(text))


def is_label_key(text: str) -> bool:
    """True when ``text`` may be a Kubernetes label key (``[prefix/]name``)."""
    prefix, _, name = text.rpartition("/")
    if prefix and not is_dns_subdomain(prefix):
        return False
    return 0 < len(name) <= DNS_LABEL_MAX and bool(_LABEL_NAME_RE.match(name))


def is_dns_1035_label(text: str) -> bool:
    """True for an RFC 1035 label: a DNS-1123 label that starts with a letter (Service names need this)."""
    return is_dns_label(text) and text[0].isalpha()


def to_dns_label(name: str) -> str | None:
    """The object name for ``name`` (lowercase; ``_`` and ``.`` become ``-``), or None when impossible.

    The result is an RFC 1035 label (it starts with a letter), so it can name a Service as well as a
    Deployment.
    """
    label = name.lower().replace("_", "-").replace(".", "-")
    return label if is_dns_1035_label(label) else None


def _suggest(name: str) -> str:
    text = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    if not text or not text[0].isalpha():
        text = f"agent-{text}".rstrip("-")
    return text[:DNS_LABEL_MAX].rstrip("-")


def agent_object_names(agents: Iterable[str], *, field: str = "agents") -> dict[str, str]:
    """Map each agent name to its Kubernetes object name (sorted by agent name).

    Raises ConfigError naming the agent when a name cannot become a DNS label (it ends with ``-`` or ``_``,
    or has characters Kubernetes refuses), or when two agents convert to the same label.
    """
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name in sorted(agents):
        label = to_dns_label(name)
        if label is None:
            raise ConfigError(
                f"agent name {name!r} cannot become a Kubernetes name (lowercase letters, digits and '-', "
                "starting with a letter, ending with a letter or digit, at most 63)",
                field=f"{field}.{name}",
                hint="rename the agent, e.g. to " + repr(_suggest(name)),
            )
        if label in owner:
            raise ConfigError(
                f"agents {owner[label]!r} and {name!r} both become the Kubernetes name {label!r}",
                field=f"{field}.{name}",
                hint="rename one of them so that their lowercase forms, with '_' and '.' read as '-', differ",
            )
        owner[label] = name
        out[name] = label
    return out


def check_node_names(nodes: Iterable[str], *, field: str = "gpus") -> None:
    """Raise ConfigError naming the node when a node name is not a Kubernetes node name.

    Nodes are matched by their ``kubernetes.io/hostname`` label, so the inventory must use the cluster's own
    names (``kubectl get nodes``); colo does not convert them.
    """
    for node in sorted(set(nodes)):
        if not is_dns_subdomain(node) or not is_label_value(node):
            raise ConfigError(
                f"node {node!r} is not a Kubernetes node name (lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit, at most 63)",
                field=f"{field}[node={node}]",
                hint="use the names `kubectl get nodes` shows in the inventory's 'node:' fields",
            )


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a valid namespace name, else raise UsageError (for ``--namespace``)."""
    if not is_dns_label(namespace):
        raise UsageError(
            f"--namespace {namespace!r} is not a Kubernetes name (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63)"
        )
    return namespace


def check_labels(labels: dict[str, str], *, field: str) -> None:
    """Raise ConfigError naming the key when a node label of the inventory is not a valid Kubernetes label."""
    for key, value in sorted(labels.items()):
        if not is_label_key(key):
            raise ConfigError(f"label key {key!r} is not a Kubernetes label key", field=f"{field}.labels")
        if not is_label_value(value):
            raise ConfigError(
                f"label {key}={value!r}: the value is not a Kubernetes label value (alphanumeric at both "
                "ends, '-', '_', '.' between, at most 63)",
                field=f"{field}.labels.{key}",
            )
