"""Deployment descriptors: both formats, and every error naming its file, line and field."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veritee.app import descriptor as d
from veritee.app.errors import DescriptorError, UnsupportedField
from veritee.wasm.endpoints import Endpoint

REPO = Path(__file__).resolve().parent.parent
SMART_HOME = REPO / "examples" / "smart-home"

GOOD = """\
app: demo
nodes:
  - {name: a, host: 127.0.0.1, port: 7001}
  - {name: b, host: 127.0.0.1, port: 7002}
modules:
  - {name: sender, node: a, source: sender.c}
  - {name: counter, node: b, binary: counter.wasm, memory_mb: 32, timeout: 2.5}
connections:
  - {from_module: sender, from_output: pressed, to_module: counter, to_input: pressed}
  - {name: ask, from_module: sender, from_request: ask, to_module: counter, to_handler: count}
  - {name: read, direct: true, to_module: counter, to_handler: count}
periodic-events:
  - {module: counter, entry: http, period: 1000}
"""

TABLES = {
    "sender": [
        Endpoint("output", "pressed"),
        Endpoint("request", "ask"),
        Endpoint("entry", "press"),
    ],
    "counter": [
        Endpoint("input", "pressed"),
        Endpoint("handler", "count"),
        Endpoint("public", "http"),
    ],
}


def parse(text: str) -> d.Descriptor:
    return d.parse(text, origin="app.yaml", base=Path("/apps"))


def error_of(text: str) -> str:
    with pytest.raises(DescriptorError) as info:
        parse(text)
    return str(info.value)


def test_veritee_format_parses_into_frozen_models() -> None:
    desc = parse(GOOD)
    assert desc.app == "demo"
    assert [n.name for n in desc.nodes] == ["a", "b"]
    assert desc.module("sender").source == Path("/apps/sender.c")
    counter = desc.module("counter")
    assert counter.binary == Path("/apps/counter.wasm")
    assert (counter.memory_mb, counter.timeout) == (32, 2.5)
    first, ask, read = desc.connections
    assert first.name == "sender.pressed->counter.pressed"
    assert first.source == Endpoint("output", "pressed")
    assert ask.target == Endpoint("handler", "count")
    assert read.direct and read.source is None
    assert desc.periodic[0].period_ms == 1000
    d.check_endpoints(desc, TABLES)
    with pytest.raises(AttributeError):
        desc.app = "other"  # type: ignore[misc]


def test_the_smart_home_descriptors_agree() -> None:
    mine = d.load(SMART_HOME / "app.yaml")
    theirs = d.load(SMART_HOME / "authentic-execution.json")
    assert mine.app == "smart-home"
    assert [m.name for m in mine.modules] == [m.name for m in theirs.modules]
    assert {c.describe() for c in mine.connections} == {c.describe() for c in theirs.connections}
    assert [(n.host, n.port) for n in mine.nodes] == [(n.host, n.port) for n in theirs.nodes]


def test_json_is_read_with_line_numbers() -> None:
    text = json.dumps(
        {
            "nodes": [{"name": "a", "host": "h", "port": 1}],
            "modules": [{"name": "m", "node": "nowhere", "binary": "m.wasm"}],
        },
        indent=2,
    )
    with pytest.raises(DescriptorError) as info:
        d.parse(text, origin="app.json")
    assert str(info.value).startswith("app.json:12: modules[0].node: unknown node 'nowhere'")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("to_module: counter, to_input: pressed", "to_module: contoller, to_input: pressed"),
            "app.yaml:9: connections[0].to_module: unknown module 'contoller'",
        ),
        (
            ("{name: counter, node: b,", "{name: sender, node: b,"),
            "app.yaml:7: modules[1].name: duplicate module name 'sender'",
        ),
        (
            ("{name: b, host: 127.0.0.1, port: 7002}", "{name: a, host: 127.0.0.1, port: 7003}"),
            "app.yaml:4: nodes[1].name: duplicate node name 'a'",
        ),
        (
            ("name: read,", "name: ask,"),
            "app.yaml:11: connections[2].name: duplicate connection name 'ask'",
        ),
        (
            ("to_module: counter, to_input: pressed}", "to_module: counter, to_handler: count}"),
            "connections[0].to_handler: a output connects to a input",
        ),
        (
            ("{name: read, direct: true,", "{name: read, direct: true, from_module: sender,"),
            "connections[2].from_module: a direct connection starts at the user's tool",
        ),
        (("port: 7002", "port: 70000"), "nodes[1].port: must be an integer from 1 to 65535"),
        (("node: b, binary", "node: b, bianry"), "modules[1].bianry: unknown field"),
        (("source: sender.c", "source: sender.go"), "modules[0].source: only .c, .wat, .rs"),
        (("period: 1000", "period: 1"), "periodic-events[0].period: must be an integer from 10"),
        (("app: demo", "app: 'two words'"), "app: 'two words' is not a name"),
    ],
)
def test_errors_name_the_line_and_field(edit: tuple[str, str], expected: str) -> None:
    old, new = edit
    assert old in GOOD
    message = error_of(GOOD.replace(old, new, 1))
    assert expected in message
    assert "\n" not in message


def test_a_cycle_of_synchronous_requests_is_refused() -> None:
    text = GOOD.replace(
        "  - {name: read,",
        "  - {name: back, from_module: counter, from_request: again, to_module: sender,"
        " to_handler: answer}\n  - {name: read,",
    )
    message = error_of(text)
    assert message.startswith("app.yaml:")
    assert "synchronous requests form a cycle: counter -> sender -> counter" in message


def test_endpoints_are_checked_against_the_binaries() -> None:
    desc = parse(GOOD)
    tables = {**TABLES, "sender": [Endpoint("output", "presed"), Endpoint("request", "ask")]}
    with pytest.raises(DescriptorError) as info:
        d.check_endpoints(desc, tables)
    message = str(info.value)
    assert message.startswith("app.yaml:9: connections[0].from_output:")
    assert "module 'sender' does not export output 'pressed'; its outputs: presed" in message

    wrong_kind = {**TABLES, "counter": [Endpoint("input", "count"), *TABLES["counter"][:1]]}
    with pytest.raises(DescriptorError, match=r"does not export handler 'count' \(it is a input\)"):
        d.check_endpoints(desc, wrong_kind)


def test_periodic_events_call_public_endpoints_only() -> None:
    desc = parse(GOOD.replace("entry: http", "entry: count"))
    with pytest.raises(DescriptorError, match="periodic events call a public endpoint"):
        d.check_endpoints(desc, TABLES)


def test_one_handler_answers_a_request() -> None:
    text = GOOD.replace(
        "  - {name: read,",
        "  - {name: ask2, from_module: sender, from_request: ask, to_module: counter,"
        " to_handler: count}\n  - {name: read,",
    )
    with pytest.raises(DescriptorError, match="already answered by connections\\[1\\]"):
        d.check_endpoints(parse(text), TABLES)


AE = {
    "nodes": [{"type": "native", "name": "n", "ip_address": "10.0.0.1", "reactive_port": 5000}],
    "modules": [{"type": "native", "name": "m", "node": "n", "files": ["m.c"]}],
    "connections": [
        {"name": "c", "direct": True, "to_module": "m", "to_input": "i", "encryption": "aes"}
    ],
    "periodic-events": [{"module": "m", "entry": "tick", "frequency": 500}],
}


def test_authentic_execution_json_is_converted() -> None:
    desc = d.parse(json.dumps(AE), origin="ae.json", base=Path("/x"), default_app="ae")
    assert desc.app == "ae"
    assert (desc.nodes[0].host, desc.nodes[0].port) == ("10.0.0.1", 5000)
    assert desc.modules[0].source == Path("/x/m.c")
    assert desc.periodic[0].period_ms == 500


@pytest.mark.parametrize(
    ("section", "change", "expected"),
    [
        ("nodes", {"type": "sgx"}, "node type 'sgx' is SGX-specific"),
        ("nodes", {"type": "sancus", "vendor_id": 1}, "node type 'sancus' is Sancus-specific"),
        ("nodes", {"aesm_host": "x"}, "nodes[0].aesm_host: Veritee cannot honour"),
        ("modules", {"type": "sgx", "vendor_key": "k"}, "module type 'sgx' is SGX-specific"),
        ("modules", {"ra_settings": "s.json"}, "modules[0].ra_settings"),
        ("modules", {"key": "00"}, "the deployer never holds module keys"),
        ("modules", {"deployed": True}, "state of an earlier Authentic Execution deployment"),
        ("modules", {"symtab": "t"}, "Sancus-specific"),
        ("connections", {"encryption": "spongent"}, "SPONGENT encryption is Sancus-specific"),
        ("connections", {"to_input": 1}, "numeric endpoint ids are Sancus-specific"),
        ("connections", {"key": "00"}, "the deployer never holds connection keys"),
    ],
)
def test_sgx_and_sancus_fields_are_refused_clearly(
    section: str, change: dict[str, object], expected: str
) -> None:
    data = json.loads(json.dumps(AE))
    data[section][0].update(change)
    with pytest.raises(UnsupportedField) as info:
        d.parse(json.dumps(data, indent=2), origin="ae.json")
    assert expected in str(info.value)
    assert str(info.value).startswith("ae.json:")


def test_the_fosdem_descriptor_is_refused_for_its_sgx_nodes() -> None:
    data = {
        "nodes": [
            {"type": "sgx", "name": "node_sgx", "ip_address": "127.0.0.1", "reactive_port": 5000}
        ],
        "modules": [{"type": "sgx", "name": "db", "node": "node_sgx"}],
    }
    with pytest.raises(UnsupportedField, match=r"nodes\[0\].type.*SGX-specific"):
        d.parse(json.dumps(data, indent=1), origin="complete.json")


def test_attestation_manager_is_refused() -> None:
    with pytest.raises(UnsupportedField, match="attestation manager"):
        d.parse(json.dumps({"manager": "manager.yaml", **AE}), origin="ae.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "a descriptor is a mapping"),
        ("nodes: [\n", "not valid YAML"),
        ('{"nodes": [}', "not valid JSON"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("nodes: 3\nmodules: []\n", "nodes: must be a list"),
        ("nodes: []\nmodules: []\n", "needs at least one node"),
    ],
)
def test_malformed_files_give_one_clear_line(text: str, expected: str) -> None:
    message = error_of(text)
    assert expected in message
    assert "\n" not in message


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_parses_or_raises_a_descriptor_error(text: str) -> None:
    with contextlib.suppress(DescriptorError):
        parse(text)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
        ),
        max_leaves=30,
    )
)
def test_any_json_tree_parses_or_raises_a_descriptor_error(tree: object) -> None:
    for candidate in (
        tree,
        {"nodes": tree},
        {"nodes": [{"type": "native", "x": tree}], "modules": tree},
    ):
        with contextlib.suppress(DescriptorError):
            d.parse(json.dumps(candidate), origin="fuzz.json")


def test_a_descriptor_too_big_is_refused() -> None:
    with pytest.raises(DescriptorError, match="over"):
        parse("#" * (d.MAX_DESCRIPTOR_BYTES + 1))
