"""Deployment descriptors: both formats, and every error naming its file, line and field."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veritee.app import descriptor as d
from veritee.app import sources
from veritee.app.errors import (
    DescriptorError,
    DescriptorProblems,
    SourceNotFound,
    UnsupportedField,
)
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
        (("source: sender.c", "source: sender.py"), "modules[0].source: only .c, .wat, .rs"),
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
        ("nodes", {"type": "sgx"}, "SGX-specific fields: nodes[0].type 'sgx' (line 4)"),
        (
            "nodes",
            {"type": "sancus", "vendor_id": 1},
            "Sancus-specific fields: nodes[0].type 'sancus' (line 4), nodes[0].vendor_id",
        ),
        ("nodes", {"aesm_host": "x"}, "nodes[0].aesm_host: Veritee cannot honour"),
        (
            "modules",
            {"type": "sgx", "vendor_key": "k"},
            "SGX-specific fields: modules[0].type 'sgx' (line 12), modules[0].vendor_key",
        ),
        ("modules", {"ra_settings": "s.json"}, "modules[0].ra_settings"),
        ("modules", {"key": "00"}, "the deployer never holds module keys"),
        ("modules", {"deployed": True}, "state of an earlier Authentic Execution deployment"),
        ("modules", {"symtab": "t"}, "Sancus-specific"),
        (
            "connections",
            {"encryption": "spongent"},
            "Sancus-specific fields: connections[0].encryption 'spongent'",
        ),
        (
            "connections",
            {"to_input": 1},
            "numeric endpoint id 1: name the endpoint, or give module 'm' an 'inputs' map",
        ),
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


def test_the_attestation_manager_is_accepted_with_one_warning() -> None:
    """reactive-tools' examples name their attestation manager; Veritee's verifier replaces it."""
    desc = d.parse(json.dumps({"manager": "manager.yaml", **AE}, indent=1), origin="ae.json")
    assert desc.warnings == (
        "ae.json:2: manager: ignored: Veritee's verification service takes the place of "
        "Authentic Execution's attestation manager (give --verifier, or verifier.url in a "
        "Veritee descriptor)",
    )


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


# -- reactive-tools' own examples (tests/assets/ae/README.md) ------------------------------------


def test_the_trustzone_example_reads_as_given(asset: Callable[[str], Path]) -> None:
    path = asset("ae/tz-to-tz/tz-to-tz.json")
    desc = d.load(path)
    (node,) = desc.nodes
    assert (node.name, node.host, node.port) == ("node_trustzone", "127.0.0.1", 1236)
    button, led = desc.modules
    assert button.source == path.parent.resolve() / "button_driver"  # files_dir/<name>/
    assert sources.find(button.source, "button_driver").name == "button_driver.c"
    assert button.declared == (Endpoint("output", "button_pressed"), Endpoint("entry", "entry"))
    assert led.declared == (Endpoint("input", "toggle_led"),)
    (conn,) = desc.connections
    assert conn.describe() == "button_driver.button_pressed -> led_driver.toggle_led"
    fields = [w.split(": ")[1] for w in desc.warnings]
    assert fields == [
        "manager",
        "nodes[0].node_key",
        "modules[0].id, modules[1].id",
        "modules[0].uuid, modules[1].uuid",
    ]
    # The node key is a secret of the TrustZone deployment: never repeated in a message.
    assert not any("9a04aa18" in w for w in desc.warnings)


def test_native_modules_are_found_by_their_name_beside_the_descriptor(
    asset: Callable[[str], Path],
) -> None:
    path = asset("ae/native/input.json")
    desc = d.load(path)
    sm1, _ = desc.modules
    assert sm1.source == path.parent.resolve() / "sm1"
    assert sources.find(sm1.source, "sm1") == sm1.source / "sm1.c"
    assert [c.describe() for c in desc.connections] == [
        "sm1.output -> sm2.input",
        "user -> sm2.input",
    ]
    assert len(desc.warnings) == 1 and "attestation manager" in desc.warnings[0]


def test_an_sgx_descriptor_is_refused_naming_every_sgx_field_at_once(
    asset: Callable[[str], Path],
) -> None:
    with pytest.raises(UnsupportedField) as info:
        d.load(asset("ae/sgx-input.json"))
    message = str(info.value)
    assert message.startswith(f"{asset('ae/sgx-input.json')}:5: nodes[0].type: ")
    for shown in (
        "nodes[0].type 'sgx' (line 5)",
        "modules[0].type 'sgx' (line 13)",
        "modules[0].vendor_key (line 16)",
        "modules[0].ra_settings (line 17)",
        "modules[1].type 'sgx' (line 20)",
        "modules[1].vendor_key (line 23)",
        "modules[1].ra_settings (line 24)",
    ):
        assert shown in message
    assert "\n" not in message


def test_a_sancus_descriptor_is_refused_naming_every_sancus_field_but_no_key(
    asset: Callable[[str], Path],
) -> None:
    with pytest.raises(UnsupportedField) as info:
        d.load(asset("ae/hybrid-input.json"))
    message = str(info.value)
    assert "nodes[1].type: Veritee cannot honour Sancus descriptors" in message
    assert (
        "Sancus-specific fields: nodes[1].type 'sancus' (line 11), nodes[1].vendor_id (line 14), "
        "nodes[1].vendor_key (line 15), modules[2].type 'sancus' (line 31), modules[3].type "
        "'sancus' (line 37), connections[0].encryption 'spongent' (line 49), "
        "connections[1].encryption 'spongent' (line 56), connections[2].encryption 'spongent' "
        "(line 62)"
    ) in message
    assert "0b7bf3ae" not in message  # the vendor key is named, never shown


def _tz(asset: Callable[[str], Path]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(asset("ae/tz-to-tz/tz-to-tz.json").read_text())
    return data


def test_numeric_endpoints_are_named_through_the_index_maps(
    asset: Callable[[str], Path],
) -> None:
    data = _tz(asset)
    data["connections"][0].update(from_output=0, to_input=1)
    (conn,) = d.parse(json.dumps(data, indent=1), origin="tz.json").connections
    assert conn.describe() == "button_driver.button_pressed -> led_driver.toggle_led"
    data["connections"][0]["to_input"] = 7
    with pytest.raises(DescriptorError, match=r"connections\[0\].to_input: module 'led_driver' "):
        d.parse(json.dumps(data, indent=1), origin="tz.json")
    data["modules"][1]["inputs"] = {"toggle_led": 1, "other": 1}
    with pytest.raises(DescriptorError, match="inputs id 1 is given to both 'toggle_led' and"):
        d.parse(json.dumps(data, indent=1), origin="tz.json")


def test_declared_endpoints_must_be_in_the_binary(asset: Callable[[str], Path]) -> None:
    desc = d.load(asset("ae/tz-to-tz/tz-to-tz.json"))
    tables = {
        "button_driver": [Endpoint("output", "button_pressed")],  # no entry "entry"
        "led_driver": [Endpoint("input", "toggle_led")],
    }
    problems = d.endpoint_problems(desc, tables)
    assert [p.field for p in problems] == ["modules[0].entrypoints.entry"]
    assert "does not export entry 'entry'" in str(problems[0])
    assert ":21: " in str(problems[0])  # the line of "entrypoints" in the file


def test_every_problem_of_a_descriptor_is_reported_at_once() -> None:
    text = (
        GOOD.replace("port: 7002", "port: 70000")
        .replace("memory_mb: 32", "memory_mb: -1")
        .replace("to_module: counter, to_input", "to_module: contoller, to_input")
        .replace("period: 1000", "period: 1")
    )
    desc, problems = d.parse_all(text, origin="app.yaml", base=Path("/apps"))
    assert [p.field for p in problems] == [
        "nodes[1].port",
        "modules[1].memory_mb",
        "connections[0].to_module",
        "periodic-events[0].period",
    ]
    # A module with a problem is left out, but what refers to it is not reported again.
    assert desc is not None and [m.name for m in desc.modules] == ["sender"]
    with pytest.raises(DescriptorProblems) as info:
        parse(text)
    assert str(info.value) == (
        "app.yaml:4: nodes[1].port: must be an integer from 1 to 65535 "
        "(and 3 more: see 'veritee deploy --check')"
    )
    assert len(info.value.problems) == 4


def test_a_source_is_found_by_name_as_authentic_execution_does(tmp_path: Path) -> None:
    m = tmp_path / "m"
    m.mkdir()
    with pytest.raises(
        SourceNotFound, match=r"holds no m\.c, m\.wat, C or WAT file, or Cargo\.toml"
    ):
        sources.find(m, "m")
    (m / "other.c").write_text("")
    assert sources.find(m, "m") == m / "other.c"  # its one C file
    (m / "third.wat").write_text("")
    with pytest.raises(SourceNotFound, match=r"several sources \(other.c, third.wat\)"):
        sources.find(m, "m")
    (m / "m.wat").write_text("")
    assert sources.find(m, "m") == m / "m.wat"
    (m / "m.c").write_text("")
    assert sources.find(m, "m") == m / "m.c"
    crate = tmp_path / "crate"
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text("[package]\nname = 'crate'\n")
    assert sources.find(crate, "crate") == crate  # the build takes the cargo project
    with pytest.raises(SourceNotFound, match="does not exist"):
        sources.find(tmp_path / "absent", "absent")


_AE_KEYS = [
    "type", "name", "node", "ip_address", "reactive_port", "deploy_port", "node_key", "files",
    "files_dir", "folder", "binary", "id", "uuid", "inputs", "outputs", "entrypoints",
    "features", "port", "priority", "key", "nonce", "deployed", "attested", "from_module",
    "from_output", "from_request", "to_module", "to_input", "to_handler", "direct",
    "encryption", "established", "module", "entry", "frequency", "vendor_key", "aesm_host",
]  # fmt: skip
_AE_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-2, 2**130)
    | st.sampled_from(["native", "trustzone", "sgx", "sancus", "aes", "spongent", "m", "n", "3"])
)
_AE_VALUES = (
    _AE_SCALARS
    | st.lists(_AE_SCALARS, max_size=3)
    | st.dictionaries(st.sampled_from(["m", "a"]), _AE_SCALARS)
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            section: st.lists(st.dictionaries(st.sampled_from(_AE_KEYS), _AE_VALUES), max_size=3)
            for section in ("nodes", "modules", "connections", "periodic-events")
        }
        | {"manager": st.just("manager.yaml")},
    )
)
def test_any_authentic_execution_tree_reads_or_lists_descriptor_errors(tree: object) -> None:
    """The reactive-tools converter collects problems; it never crashes on what it is given."""
    desc, problems = d.parse_all(json.dumps(tree), origin="ae.json", base=Path("/x"))
    assert all(isinstance(p, DescriptorError) and "\n" not in str(p) for p in problems)
    assert desc is not None or problems
