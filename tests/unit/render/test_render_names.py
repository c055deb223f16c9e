"""Kubernetes names: DNS-1123 checks, deterministic agent-name conversion, clear errors naming the agent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from colo.errors import ConfigError, UsageError
from colo.render.names import (
    agent_object_names,
    check_labels,
    check_namespace,
    check_node_names,
    is_dns_label,
    is_dns_subdomain,
    is_label_key,
    is_label_value,
    to_dns_label,
)


def test_dns_label_rules() -> None:
    assert is_dns_label("analyst-r0")
    assert is_dns_label("a" * 63)
    for bad in ("", "a" * 64, "Analyst", "chief_editor", "-a", "a-", "a.b", "a b"):
        assert not is_dns_label(bad), bad
    assert is_dns_subdomain("gpu-node-a.example.com")
    assert not is_dns_subdomain("GPU_node")


def test_label_keys_and_values() -> None:
    assert is_label_key("nvidia.com/gpu.product")
    assert is_label_key("colo.dev/gpu-node")
    assert not is_label_key("Bad_Prefix/x")
    assert not is_label_key("nvidia.com/")
    assert is_label_value("NVIDIA-H100-80GB-HBM3")
    assert is_label_value("")
    assert not is_label_value("has space")
    assert not is_label_value("-leading")


def test_conversion_is_deterministic() -> None:
    assert to_dns_label("chief_editor") == "chief-editor"
    assert to_dns_label("Fact_Checker.v2") == "fact-checker-v2"
    assert to_dns_label("scout_") is None
    assert to_dns_label("2nd-scout") is None  # a Service name must start with a letter
    names = agent_object_names(["chief_editor-r0", "analyst-r0", "memory"])
    assert names == {"analyst-r0": "analyst-r0", "chief_editor-r0": "chief-editor-r0", "memory": "memory"}
    assert list(names) == sorted(names)


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", fullmatch=True))
def test_converted_names_are_valid_or_refused(name: str) -> None:
    label = to_dns_label(name)
    if label is not None:
        assert is_dns_label(label)
        assert label == to_dns_label(name)
    else:
        with pytest.raises(ConfigError, match=repr(name)):
            agent_object_names([name])


def test_collision_names_both_agents() -> None:
    with pytest.raises(ConfigError) as info:
        agent_object_names(["chief_editor", "chief-editor"])
    msg = str(info.value)
    assert "'chief-editor' and 'chief_editor' both become" in msg
    with pytest.raises(ConfigError, match="Scout"):
        agent_object_names(["scout", "Scout"])


def test_unconvertible_name_is_named_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        agent_object_names(["ok", "scout_"])
    assert "agents.scout_" in str(info.value)
    assert "'scout'" in str(info.value)  # the hint proposes a valid name
    with pytest.raises(ConfigError, match="'agent-2nd'"):
        agent_object_names(["2nd"])


def test_node_namespace_and_label_checks() -> None:
    check_node_names(["gpu-node-a", "node.example.com"])
    with pytest.raises(ConfigError, match="GPU_Node"):
        check_node_names(["gpu-node-a", "GPU_Node"])
    assert check_namespace("colo") == "colo"
    with pytest.raises(UsageError, match="Colo_NS"):
        check_namespace("Colo_NS")
    check_labels({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, field="gpus[0]")
    with pytest.raises(ConfigError, match=r"gpus\[1\]\.labels\.zone"):
        check_labels({"zone": "eu west"}, field="gpus[1]")
