"""The verifier's decision code with plain values: minted Veritee evidence, PSA/CCA vectors.

No process, no socket: :func:`veritee.verifier.appraise.appraise` takes bytes, a nonce,
endorsements and a compiled policy, and returns an unsigned EAR or raises. Every check has a
test naming the exact failure, and hypothesis feeds it garbage and mutations.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from veritee.evidence import certs, cose
from veritee.evidence.appraisal import LinkCache, TrustAnchors, verify
from veritee.evidence.claims import (
    HWMODEL_EMULATED,
    MEDIA_TYPE,
    BootEntry,
    Evidence,
    ModuleClaims,
    PlatformClaims,
    VteeClaims,
    encode_claims,
    ueid_of,
)
from veritee.evidence.errors import UntrustedDevice
from veritee.verifier import ear, endorsements, media
from veritee.verifier.appraise import FAILURE, REASONS, VERITEE_CLAIMS, Context, Outcome, appraise
from veritee.verifier.endorsements import Endorsements, ReferenceValue, Revocation
from veritee.verifier.errors import (
    PolicyCompileError,
    ProvisioningError,
    UnsupportedMediaType,
)
from veritee.verifier.policy import (
    DEFAULT_POLICY,
    STRICT_POLICY,
    Policy,
    compile_policy,
)

Vector = Callable[[str], Path]

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
NONCE = bytes(range(32))
MODULE = bytes.fromhex("aa" * 32)
CONFIG = bytes.fromhex("cc" * 32)
BOOT = (
    BootEntry("secure-world", bytes.fromhex("11" * 32), bytes(32), "0.1.0"),
    BootEntry("wasm-runtime", bytes.fromhex("22" * 32), bytes(32), "50.0"),
)
VERIFIER = ear.VerifierId("Veritee", "test")
DEFAULT = compile_policy("default", DEFAULT_POLICY)
STRICT = compile_policy("strict", STRICT_POLICY)


# -- a device minted in memory -----------------------------------------------------------------


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    days: int = 365,
    endorses: str | None = "secured",
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            # Veritee's device-certificate profile: keyCertSign for the CA, signatures for a device.
            x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False),
            critical=True,
        )
    )
    if endorses is not None:
        # The kit stands in for a hardware manufacturer: by default it endorses secured devices.
        builder = builder.add_extension(certs.lifecycle_extension(endorses), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Kit:
    """A manufacturer CA and one device with a vTEE and a module: mints evidence."""

    ca_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    dak: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    vtee_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    module_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    ca_endorses: str | None = "secured"  # the lifecycle mark on the CA (None: no mark)
    device_endorses: str | None = None  # ... and on the device certificate

    def __post_init__(self) -> None:
        self.ca = _cert("Test manufacturer CA", self.ca_key, ca=True, endorses=self.ca_endorses)
        self.device_cert = _cert(
            "Test device",
            self.dak,
            ("Test manufacturer CA", self.ca_key),
            endorses=self.device_endorses,
        )

    @property
    def ca_pem(self) -> str:
        return self.ca.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def ueid(self) -> bytes:
        return ueid_of(cose.ec_key_to_cose(self.dak.public_key()))

    def evidence(
        self,
        nonce: bytes = NONCE,
        *,
        lifecycle: str = "secured",
        secure_boot: bool = True,
        boot: tuple[BootEntry, ...] = BOOT,
        measurement: bytes = MODULE,
        module_signer: ec.EllipticCurvePrivateKey | None = None,
        platform_signer: ec.EllipticCurvePrivateKey | None = None,
        rollback_protection: str = "none",
        hwmodel: str = HWMODEL_EMULATED,
    ) -> bytes:
        vtee_cose = cose.ec_key_to_cose(self.vtee_key.public_key())
        module_cose = cose.ec_key_to_cose(self.module_key.public_key())
        platform = PlatformClaims(
            ueid=self.ueid,
            lifecycle=lifecycle,
            secure_boot=secure_boot,
            boot_log=boot,
            vtee_id=bytes(16),
            vtee_name="default",
            vtee_config=CONFIG,
            vtee_key=vtee_cose,
            iat=int(NOW.timestamp()),
            rollback_protection=rollback_protection,
            hwmodel=hwmodel,
        )
        vtee = VteeClaims(bytes(16), measurement, CONFIG, module_cose, int(NOW.timestamp()))
        provisioning = cose.x25519_key_to_cose(x25519.X25519PrivateKey.generate().public_key())
        module = ModuleClaims(
            nonce, measurement, CONFIG, "hello", provisioning, int(NOW.timestamp())
        )
        chain = [self.device_cert.public_bytes(serialization.Encoding.DER)]
        return Evidence(
            platform=cose.sign1(
                encode_claims(platform),
                platform_signer or self.dak,
                unprotected={cose.HDR_X5CHAIN: chain},
            ),
            vtee=cose.sign1(encode_claims(vtee), self.vtee_key),
            module=cose.sign1(encode_claims(module), module_signer or self.module_key),
        ).encode()

    def endorsements(self, **changes: Any) -> Endorsements:
        refs = [
            ReferenceValue("veritee", "boot", e.component, e.measurement, e.version) for e in BOOT
        ]
        refs.append(ReferenceValue("veritee", "module", "hello", MODULE, "1.0"))
        fields: dict[str, Any] = {
            # A hardware manufacturer's CA: the operator says it may endorse secured.
            "cas": endorsements.ca_anchors_from_pem(self.ca_pem, max_lifecycle="secured"),
            "references": refs,
        }
        fields.update(changes)
        return Endorsements.build(**fields)


@pytest.fixture(scope="module")
def kit() -> Kit:
    return Kit()


def _context(e: Endorsements, policy: Policy = DEFAULT, now: dt.datetime = NOW) -> Context:
    return Context(endorsements=e, policy=policy, verifier_id=VERIFIER, now=now)


def _appraise(
    kit: Kit,
    evidence: bytes | None = None,
    *,
    nonce: bytes = NONCE,
    policy: Policy = DEFAULT,
    e: Endorsements | None = None,
) -> Outcome:
    return appraise(
        kit.evidence() if evidence is None else evidence,
        MEDIA_TYPE,
        nonce,
        _context(kit.endorsements() if e is None else e, policy),
    )


def _vector(outcome: Outcome, submod: str) -> dict[str, int]:
    return outcome.result.submods[submod].trust_vector.to_json()


def _claims(outcome: Outcome, submod: str) -> Any:
    return outcome.result.submods[submod].extensions["ear.veraison.annotated-evidence"]


def _failure(outcome: Outcome) -> Any:
    return outcome.result.extensions.get(FAILURE)


# -- Veritee evidence: passing -----------------------------------------------------------------


def test_secured_endorsed_device_is_affirming(kit: Kit) -> None:
    outcome = _appraise(kit)
    assert outcome.status == "affirming"
    assert outcome.failure is None
    assert set(outcome.result.submods) == {"platform", "module"}
    assert _vector(outcome, "platform") == {
        "instance-identity": 2,
        "configuration": 2,
        "executables": 2,
        "hardware": 2,
    }
    assert _vector(outcome, "module") == {"instance-identity": 2, "executables": 2, "hardware": 2}
    platform = _claims(outcome, "platform")
    assert platform["ueid"] == kit.ueid.hex()
    assert platform["lifecycle"] == "secured"
    assert platform["vtee-name"] == "default"
    assert _claims(outcome, "module")["endorsed-as"] == {"name": "hello", "version": "1.0"}
    assert outcome.result.submods["module"].policy_id == DEFAULT.id
    assert outcome.result.nonce == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    assert outcome.result.exp == outcome.result.iat + 600


def test_result_signs_and_verifies_as_an_ear(kit: Kit) -> None:
    key = _key()
    outcome = _appraise(kit)
    token = ear.sign(outcome.result, key)
    assert ear.verify(token, key.public_key(), now=int(NOW.timestamp())) == outcome.result


@pytest.mark.parametrize("lifecycle", ["emulated", "debug"])
def test_emulated_or_debug_hardware_is_a_warning_under_the_default_policy(
    kit: Kit, lifecycle: str
) -> None:
    outcome = _appraise(kit, kit.evidence(lifecycle=lifecycle))
    assert outcome.status == "warning"
    for submod in ("platform", "module"):
        assert outcome.result.submods[submod].status == "warning"
        assert _vector(outcome, submod)["hardware"] == 32


def test_strict_policy_requires_a_secured_device(kit: Kit) -> None:
    outcome = _appraise(kit, kit.evidence(lifecycle="emulated"), policy=STRICT)
    assert outcome.status == "contraindicated"
    assert _vector(outcome, "platform")["hardware"] == 96
    assert _vector(outcome, "module")["hardware"] == 96
    assert outcome.result.submods["platform"].policy_id == STRICT.id
    assert _appraise(kit, policy=STRICT).status == "affirming"


def test_no_secure_boot_is_not_accepted(kit: Kit) -> None:
    outcome = _appraise(kit, kit.evidence(secure_boot=False))
    assert outcome.result.submods["platform"].status == "contraindicated"
    assert _vector(outcome, "platform")["configuration"] == 96


# -- Veritee evidence: measurements ------------------------------------------------------------


def test_module_not_in_reference_values_is_contraindicated_executables(kit: Kit) -> None:
    outcome = _appraise(kit, kit.evidence(measurement=bytes.fromhex("ab" * 32)))
    assert outcome.failure is None
    module = outcome.result.submods["module"]
    assert module.status == "contraindicated"
    assert _vector(outcome, "module")["executables"] == 96
    assert "ab" * 32 in module.extensions[REASONS][0]
    assert _claims(outcome, "module")["endorsed-as"] is None
    # The platform is fine: only the module is at fault.
    assert outcome.result.submods["platform"].status == "affirming"


def test_altered_boot_measurement_is_contraindicated_executables(kit: Kit) -> None:
    altered = (BOOT[0], BootEntry("wasm-runtime", bytes.fromhex("23" * 32), bytes(32), "50.0"))
    outcome = _appraise(kit, kit.evidence(boot=altered))
    platform = outcome.result.submods["platform"]
    assert platform.status == "contraindicated"
    assert _vector(outcome, "platform")["executables"] == 96
    assert list(platform.extensions[REASONS]) == [
        "boot component 'wasm-runtime' measures 2323232323232323…, which is not an endorsed value"
    ]
    assert [b["endorsed"] for b in _claims(outcome, "platform")["boot"]] == [True, False]


def test_unknown_boot_component_and_missing_component_are_named(kit: Kit) -> None:
    boot = (BOOT[0], BootEntry("extra", bytes(32), bytes(32), ""))
    reasons = _appraise(kit, kit.evidence(boot=boot)).result.submods["platform"].extensions[REASONS]
    assert "boot component 'extra' has no reference value" in reasons
    assert "boot log lacks endorsed component(s): ['wasm-runtime']" in reasons


def test_reference_values_of_another_scheme_do_not_count(kit: Kit) -> None:
    refs = [ReferenceValue("psa", "module", "hello", MODULE)]
    e = kit.endorsements(references=refs)
    outcome = _appraise(kit, e=e)
    assert _vector(outcome, "module")["executables"] == 96


# -- Veritee evidence: failed checks -----------------------------------------------------------


def _assert_failed(outcome: Outcome, check: str, code: int) -> None:
    assert outcome.status == "contraindicated"
    assert _failure(outcome)["check"] == check
    for appraisal in outcome.result.submods.values():
        assert appraisal.status == "contraindicated"
        assert appraisal.trust_vector.instance_identity == code
        assert "ear.veraison.annotated-evidence" not in appraisal.extensions


def test_evidence_for_another_nonce_fails_nonce_check(kit: Kit) -> None:
    outcome = _appraise(kit, kit.evidence(bytes(32)))
    _assert_failed(outcome, "NonceMismatch", 99)
    assert "nonce" in _failure(outcome)["reason"]


def test_unknown_ca_is_unrecognised(kit: Kit) -> None:
    outcome = _appraise(kit, e=kit.endorsements(cas=[]))
    _assert_failed(outcome, "UntrustedDevice", 97)


def test_another_manufacturers_device_is_unrecognised(kit: Kit) -> None:
    stranger = Kit()
    _assert_failed(_appraise(kit, stranger.evidence()), "UntrustedDevice", 97)


def test_revoked_device(kit: Kit) -> None:
    e = kit.endorsements(revocations=[Revocation("device", kit.ueid, "stolen")])
    outcome = _appraise(kit, e=e)
    _assert_failed(outcome, "DeviceRevoked", 96)
    assert kit.ueid.hex() in _failure(outcome)["reason"]


def test_revoked_ca(kit: Kit) -> None:
    ca_id = endorsements.ca_id(kit.ca_pem)
    outcome = _appraise(kit, e=kit.endorsements(revocations=[Revocation("ca", ca_id)]))
    _assert_failed(outcome, "CaRevoked", 96)


@pytest.mark.parametrize(
    ("ca_endorses", "device_endorses", "claimed"),
    [
        (None, None, "secured"),  # a CA without the mark endorses only "emulated"
        (None, None, "debug"),
        ("emulated", None, "secured"),
        ("secured", "emulated", "secured"),  # the lowest over the chain counts
        ("secured", "debug", "secured"),
    ],
)
def test_a_lifecycle_above_the_chains_endorsement_is_refused(
    ca_endorses: str | None, device_endorses: str | None, claimed: str
) -> None:
    """Issue 18, attack 4: the device's owner signs a platform token claiming more."""
    k = Kit(ca_endorses=ca_endorses, device_endorses=device_endorses)
    outcome = _appraise(k, k.evidence(lifecycle=claimed))
    _assert_failed(outcome, "LifecycleNotEndorsed", 96)
    assert f"claims lifecycle {claimed!r}" in _failure(outcome)["reason"]


def test_a_lifecycle_within_the_endorsement_is_reported_as_endorsed() -> None:
    k = Kit(device_endorses="debug")
    outcome = _appraise(k, k.evidence(lifecycle="debug"))
    platform = _claims(outcome, "platform")
    assert (platform["lifecycle"], platform["lifecycle-ceiling"]) == ("debug", "debug")
    assert outcome.status == "warning" and _vector(outcome, "platform")["hardware"] == 32
    # A secured device may claim less than its endorsement; the claim, lower, is what counts.
    outcome = _appraise(kit_ := Kit(), kit_.evidence(lifecycle="emulated"))
    assert _claims(outcome, "platform")["lifecycle"] == "emulated"
    assert _claims(outcome, "platform")["lifecycle-ceiling"] == "secured"
    assert outcome.status == "warning"


def _minted(kit: Kit, lifecycle: str = "secured") -> tuple[bytes, bytes]:
    """Issue 18, attack 3: the DAK certifies a fresh key; the chain is [new leaf, device cert]."""
    fresh = Kit(ca_key=kit.ca_key, dak=_key())
    leaf = _cert("New device", fresh.dak, ("Test device", kit.dak))
    evidence = Evidence.decode(fresh.evidence(lifecycle=lifecycle))
    claims = cbor2.loads(evidence.platform).value[2]
    chain = [c.public_bytes(serialization.Encoding.DER) for c in (leaf, kit.device_cert)]
    platform = cose.sign1(claims, fresh.dak, unprotected={cose.HDR_X5CHAIN: chain})
    forged = Evidence(platform, evidence.vtee, evidence.module).encode()
    return forged, fresh.ueid


def test_a_device_key_cannot_certify_another_device(kit: Kit) -> None:
    forged, ueid = _minted(kit)
    e = kit.endorsements(revocations=[Revocation("device", kit.ueid, "stolen")])
    outcome = _appraise(kit, forged, e=e)
    _assert_failed(outcome, "UntrustedDevice", 97)
    assert "cannot certify another key" in _failure(outcome)["reason"]
    assert ueid != kit.ueid
    _assert_failed(_appraise(kit, e=e), "DeviceRevoked", 96)  # the device stays revoked


def test_module_token_signed_with_a_wrong_key(kit: Kit) -> None:
    outcome = _appraise(kit, kit.evidence(module_signer=_key()))
    _assert_failed(outcome, "BadSignature", 99)


def test_platform_token_signed_with_a_wrong_key(kit: Kit) -> None:
    outcome = _appraise(kit, kit.evidence(platform_signer=_key()))
    _assert_failed(outcome, "BadSignature", 99)


def test_expired_device_certificate_is_untrusted(kit: Kit) -> None:
    later = NOW + dt.timedelta(days=400)
    outcome = appraise(kit.evidence(), MEDIA_TYPE, NONCE, _context(kit.endorsements(), now=later))
    _assert_failed(outcome, "UntrustedDevice", 97)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"garbage, not CBOR", b"\xa1\x01", b"\xff" * 100],
    ids=["empty", "zero", "text", "small-map", "ff"],
)
def test_garbage_is_malformed(kit: Kit, data: bytes) -> None:
    # A signed result says so, as Veraison's does (no longer an exception, a 400).
    _assert_failed(_appraise(kit, data), "MalformedToken", 99)


def test_truncated_evidence_is_malformed(kit: Kit) -> None:
    good = kit.evidence()
    for cut in (1, len(good) // 2, len(good) - 1):
        _assert_failed(_appraise(kit, good[:cut]), "MalformedToken", 99)


def test_oversized_evidence_is_malformed(kit: Kit) -> None:
    outcome = _appraise(kit, kit.evidence() + bytes(70_000))
    _assert_failed(outcome, "MalformedToken", 99)
    assert "limit" in _failure(outcome)["reason"]


def test_unknown_media_type(kit: Kit) -> None:
    with pytest.raises(UnsupportedMediaType):
        appraise(kit.evidence(), "application/octet-stream", NONCE, _context(kit.endorsements()))


# -- policies ----------------------------------------------------------------------------------


def test_a_policy_may_accept_an_unknown_module(kit: Kit) -> None:
    dev = compile_policy(
        "dev",
        """package veritee
import rego.v1
executables.module := 2 if input.submods.module.claims.name == "hello"
""",
    )
    outcome = _appraise(kit, kit.evidence(measurement=bytes(32)), policy=dev)
    assert outcome.result.submods["module"].status == "affirming"
    assert outcome.result.submods["module"].policy_id == dev.id


def test_a_policy_status_can_only_make_things_worse(kit: Kit) -> None:
    worse = compile_policy(
        "worse", 'package veritee\nstatus.module := "warning"\nstatus.platform := "none"\n'
    )
    outcome = _appraise(kit, policy=worse)
    assert outcome.result.submods["module"].status == "warning"
    assert outcome.result.submods["platform"].status == "affirming"


def test_a_policy_never_rescues_a_failed_signature(kit: Kit) -> None:
    lax = compile_policy(
        "lax", "package veritee\nimport rego.v1\ninstance_identity.platform := 2\n"
    )
    outcome = _appraise(kit, kit.evidence(module_signer=_key()), policy=lax)
    assert outcome.status == "contraindicated"


def test_a_policy_that_fails_at_run_time_is_contraindicated(kit: Kit) -> None:
    broken = compile_policy(
        "broken",
        "package veritee\nimport rego.v1\n"
        'hardware.platform := 200 if input.submods.module.claims.name == "hello"\n',
    )
    outcome = _appraise(kit, policy=broken)
    assert outcome.status == "contraindicated"
    assert _failure(outcome)["check"] == "PolicyFailed"


@pytest.mark.parametrize(
    ("rego", "match"),
    [
        ("package veritee\nhardware := [", "does not compile"),
        ("package veritee\nhardware := 32\n", "object keyed by submodule"),
        ('package veritee\nstatus := {"platform": "great"}\n', "status"),
    ],
)
def test_bad_policies_do_not_compile(rego: str, match: str) -> None:
    with pytest.raises(PolicyCompileError, match=match):
        compile_policy("bad", rego)


def test_a_policy_in_another_package_changes_nothing(kit: Kit) -> None:
    other = compile_policy("other", "package elsewhere\nx := 1\n")
    assert _appraise(kit, policy=other).status == "affirming"


# -- media types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        (MEDIA_TYPE, "veritee"),
        ("Application/VND.veritee.evidence+CBOR", "veritee"),
        ("application/psa-attestation-token", "psa"),
        ('application/eat-cwt; profile="http://arm.com/psa/2.0.0"', "psa"),
        ("application/eat-cwt;profile=http://arm.com/psa/2.0.0", "psa"),
        ("application/eat-collection; profile=http://arm.com/CCA-SSD/1.0.0", "cca"),
        ('application/eat-collection; profile="http://arm.com/CCA-SSD/1.0.0"', "cca"),
        (f"{MEDIA_TYPE}; charset=binary", "veritee"),
    ],
)
def test_media_types(text: str, scheme: str) -> None:
    assert media.scheme_of(text) == scheme


@pytest.mark.parametrize(
    "text",
    [
        "",
        "text/plain",
        "application/eat-collection",
        "application/eat-cwt; profile=other",
        "nonsense",
        "a/b; broken",
        "x" * 300,
    ],
)
def test_unsupported_media_types(text: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        media.scheme_of(text)


# -- PSA and CCA vectors -----------------------------------------------------------------------


def _expected(vector: Vector, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vector(f"{name}.expected.json").read_text())
    return data


def _psa_refs(components: list[dict[str, Any]], scheme: str = "psa") -> list[ReferenceValue]:
    return endorsements.reference_values(
        [
            {
                "scheme": scheme,
                "kind": "boot",
                "name": c.get("measurement_type", ""),
                "version": c.get("version", ""),
                "measurement": c["measurement_value"],
            }
            for c in components
        ]
    )


def _psa_case(vector: Vector, name: str, key: str) -> tuple[bytes, bytes, Endorsements]:
    claims = _expected(vector, f"psa/{name}")["claims"]
    anchor = endorsements.key_anchor(
        {
            "scheme": "psa",
            "key": vector(f"psa/{key}").read_text(),
            "instance-id": claims["instance_id"],
        }
    )
    e = Endorsements.build(keys=[anchor], references=_psa_refs(claims["software_components"]))
    token = vector(f"psa/{name}.cbor").read_bytes()
    return token, bytes.fromhex(claims["nonce"]), e


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("veraison-e2e-psa-evidence", "veraison-e2e-iak-pub.pem"),
        ("tfm-psa-2_0_0-sign1", "tfm-iak-pub.pem"),
        ("tfm-psa-iot-1-sign1", "tfm-iak-pub.pem"),
    ],
)
def test_psa_vectors_are_affirming(vector: Vector, name: str, key: str) -> None:
    token, nonce, e = _psa_case(vector, name, key)
    outcome = appraise(token, media.PSA_TOKEN, nonce, _context(e))
    assert outcome.status == "affirming", outcome.result.to_json()
    assert set(outcome.result.submods) == {"PSA_IOT"}
    assert _vector(outcome, "PSA_IOT") == {
        "instance-identity": 2,
        "executables": 2,
        "hardware": 2,
    }
    assert outcome.result.submods["PSA_IOT"].extensions[VERITEE_CLAIMS]["lifecycle"] == "secured"


def test_psa_unendorsed_component(vector: Vector) -> None:
    token, nonce, e = _psa_case(vector, "veraison-e2e-psa-evidence", "veraison-e2e-iak-pub.pem")
    e = Endorsements.build(keys=[_only_key(e, "psa")], references=e.references[1:])
    outcome = appraise(token, media.PSA_2_0_0, nonce, _context(e))
    assert _vector(outcome, "PSA_IOT")["executables"] == 96
    assert "software component 'BL'" in outcome.result.submods["PSA_IOT"].extensions[REASONS][0]


def _only_key(e: Endorsements, scheme: str) -> endorsements.KeyAnchor:
    ((s, instance), key), *_ = e.keys.items()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return endorsements.KeyAnchor(s, instance, pem)


def test_psa_unknown_device(vector: Vector) -> None:
    token, nonce, _e = _psa_case(vector, "veraison-e2e-psa-evidence", "veraison-e2e-iak-pub.pem")
    outcome = appraise(token, media.PSA_TOKEN, nonce, _context(Endorsements()))
    _assert_failed(outcome, "UnknownDevice", 97)


def test_psa_wrong_key_for_the_instance(vector: Vector) -> None:
    token, nonce, _e = _psa_case(vector, "veraison-e2e-psa-evidence", "veraison-e2e-iak-pub.pem")
    wrong = endorsements.key_anchor(
        {
            "scheme": "psa",
            "key": vector("psa/tfm-iak-pub.pem").read_text(),
            "instance-id": _expected(vector, "psa/veraison-e2e-psa-evidence")["claims"][
                "instance_id"
            ],
        }
    )
    outcome = appraise(token, media.PSA_TOKEN, nonce, _context(Endorsements.build(keys=[wrong])))
    _assert_failed(outcome, "BadSignature", 99)


def test_psa_nonce_mismatch_and_revocation(vector: Vector) -> None:
    token, nonce, e = _psa_case(vector, "veraison-e2e-psa-evidence", "veraison-e2e-iak-pub.pem")
    _assert_failed(appraise(token, media.PSA_TOKEN, bytes(32), _context(e)), "NonceMismatch", 99)
    anchor = _only_key(e, "psa")
    revoked = Endorsements.build(
        keys=[anchor], revocations=[Revocation("device", anchor.instance_id)]
    )
    _assert_failed(appraise(token, media.PSA_TOKEN, nonce, _context(revoked)), "DeviceRevoked", 96)


def _cca_case(
    vector: Vector, name: str, key: str, *, realm: bool = True
) -> tuple[bytes, bytes, Endorsements]:
    expected = _expected(vector, f"cca/{name}")
    platform, realm_claims = expected["platform"]["claims"], expected["realm"]["claims"]
    anchor = endorsements.key_anchor(
        {
            "scheme": "cca",
            "key": vector(f"cca/{key}").read_text(),
            "instance-id": platform["instance_id"],
        }
    )
    refs = _psa_refs(platform["software_components"], "cca")
    if realm:
        refs += endorsements.reference_values(
            {
                "scheme": "cca",
                "kind": "realm",
                "name": "realm",
                "measurement": realm_claims["initial_measurement"],
            }
        )
    e = Endorsements.build(keys=[anchor], references=refs)
    return vector(f"cca/{name}.cbor").read_bytes(), bytes.fromhex(realm_claims["challenge"]), e


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("veraison-e2e-cca-evidence", "veraison-e2e-cpak-pub.pem"),
        ("tfrmm-cca-token", "cca-cpak-pub.pem"),
        ("tfmtools-cca-example-token", "cca-cpak-pub.pem"),
    ],
)
def test_cca_vectors_are_affirming(vector: Vector, name: str, key: str) -> None:
    token, nonce, e = _cca_case(vector, name, key)
    outcome = appraise(token, media.CCA_TOKEN, nonce, _context(e))
    assert outcome.status == "affirming", outcome.result.to_json()
    assert set(outcome.result.submods) == {"CCA_SSD_PLATFORM", "CCA_REALM"}
    assert _vector(outcome, "CCA_REALM")["executables"] == 2


def test_cca_unendorsed_realm(vector: Vector) -> None:
    token, nonce, e = _cca_case(
        vector, "veraison-e2e-cca-evidence", "veraison-e2e-cpak-pub.pem", realm=False
    )
    outcome = appraise(token, media.CCA_TOKEN, nonce, _context(e))
    assert outcome.result.submods["CCA_SSD_PLATFORM"].status == "affirming"
    assert outcome.result.submods["CCA_REALM"].status == "contraindicated"
    assert _vector(outcome, "CCA_REALM")["executables"] == 96


def test_cca_failures(vector: Vector) -> None:
    token, nonce, e = _cca_case(vector, "veraison-e2e-cca-evidence", "veraison-e2e-cpak-pub.pem")
    _assert_failed(appraise(token, media.CCA_TOKEN, bytes(64), _context(e)), "NonceMismatch", 99)
    _assert_failed(
        appraise(token, media.CCA_TOKEN, nonce, _context(Endorsements())), "UnknownDevice", 97
    )


# -- provisioning input ------------------------------------------------------------------------


def test_manufacturer_reference_values_file() -> None:
    refs = endorsements.reference_values(
        {
            "boot": [{"component": "secure-world", "measurement": "11" * 32, "version": "0.1"}],
            "modules": [{"name": "hello", "measurement": "aa" * 32}],
        }
    )
    assert [(r.scheme, r.kind, r.name) for r in refs] == [
        ("veritee", "boot", "secure-world"),
        ("veritee", "module", "hello"),
    ]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"kind": "module", "measurement": "zz"}, "hex"),
        ({"kind": "module", "measurement": "aa" * 31}, "31 bytes"),
        ({"kind": "firmware", "measurement": "aa" * 32}, "kind"),
        ({"scheme": "tpm", "kind": "boot", "measurement": "aa" * 32}, "scheme"),
        ({"kind": "boot", "measurement": "aa" * 32}, "name"),
        ("text", "object"),
    ],
)
def test_bad_reference_values(value: Any, match: str) -> None:
    with pytest.raises(ProvisioningError, match=match):
        endorsements.reference_values(value)


def test_key_anchors(vector: Vector) -> None:
    # TF-M derives its instance id from the key: leaving it out derives it the same way.
    anchor = endorsements.key_anchor(
        {"scheme": "psa", "key": vector("psa/tfm-iak-pub.pem").read_text()}
    )
    expected = _expected(vector, "psa/tfm-psa-2_0_0-sign1")["claims"]["instance_id"]
    assert anchor.instance_id.hex() == expected
    jwk = json.loads(vector("psa/veraison-e2e-iak-pub.jwk").read_text())
    by_jwk = endorsements.key_anchor({"scheme": "psa", "key": jwk, "instance-id": "01" * 33})
    assert by_jwk.instance_id == bytes.fromhex("01" * 33)
    with pytest.raises(ProvisioningError, match="instance-id"):
        endorsements.key_anchor(
            {"scheme": "cca", "key": vector("cca/cca-cpak-pub.pem").read_text()}
        )
    with pytest.raises(ProvisioningError, match="without 'd'"):
        endorsements.key_anchor({"scheme": "psa", "key": {**jwk, "d": "AA"}})
    with pytest.raises(ProvisioningError, match="PEM"):
        endorsements.key_anchor({"scheme": "psa", "key": "not a key"})


def test_ca_bundles_and_revocations(kit: Kit) -> None:
    other = Kit()
    anchors = endorsements.ca_anchors_from_pem(kit.ca_pem + other.ca_pem)
    assert len(anchors) == 2
    # A CA is revoked by its key (every certificate of it), not by one certificate's digest.
    assert endorsements.revocation({"ca": kit.ca_pem}).value.hex() == anchors[0].key_id
    assert anchors[0].max_lifecycle == "emulated"  # unless the operator says otherwise
    assert endorsements.revocation({"device": kit.ueid.hex()}).value == kit.ueid
    with pytest.raises(ProvisioningError):
        endorsements.revocation({"device": "nothex"})
    with pytest.raises(ProvisioningError):
        endorsements.ca_anchors_from_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
        )


def test_deployment_document(kit: Kit) -> None:
    doc = {
        "trust-anchors": [{"ca": kit.ca_pem}],
        "reference-values": [{"kind": "module", "name": "m", "measurement": "aa" * 32}],
        "revocations": [{"device": "01" * 33, "reason": "lost"}],
        "policies": [{"name": "mine", "rego": "package veritee\n", "activate": True}],
    }
    d = endorsements.Deployment.parse(doc)
    assert (len(d.anchors), len(d.references), len(d.revocations)) == (1, 1, 1)
    assert d.active_policy == "mine"
    with pytest.raises(ProvisioningError, match="unknown sections"):
        endorsements.Deployment.parse({"trust-anchor": []})


# -- fuzzing the decision ----------------------------------------------------------------------

FUZZ = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _appraise_anything(data: bytes, media_type: str, e: Endorsements, nonce: bytes) -> None:
    """Bad input raises nothing: it gets a result (malformed evidence: contraindicated)."""
    outcome = appraise(data, media_type, nonce, _context(e))
    assert outcome.status in ear.STATUSES


@FUZZ
@given(data=st.binary(max_size=3000), media_type=st.sampled_from(media.ACCEPT_LIST))
def test_fuzz_arbitrary_bytes(kit: Kit, data: bytes, media_type: str) -> None:
    _appraise_anything(data, media_type, kit.endorsements(), NONCE)


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.none() | st.integers(0, 10_000),
)
# Found by this fuzzer: a device certificate whose version byte reads 1 (v2) made
# cryptography raise InvalidVersion, which is no ValueError, and escaped appraisal.
@example(edits=[(76, 1)], cut=None)
def test_fuzz_mutated_veritee_evidence(
    kit: Kit, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(_GOOD.setdefault("veritee", kit.evidence()))
    for pos, byte in edits:
        data[pos % len(data)] = byte
    if cut is not None:
        del data[cut % len(data) :]
    _appraise_anything(bytes(data), MEDIA_TYPE, kit.endorsements(), NONCE)


_GOOD: dict[str, bytes] = {}


@FUZZ
@given(
    which=st.sampled_from(["psa", "cca"]),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_fuzz_mutated_arm_vectors(vector: Vector, which: str, edits: list[tuple[int, int]]) -> None:
    if which == "psa":
        token, nonce, e = _psa_case(vector, "veraison-e2e-psa-evidence", "veraison-e2e-iak-pub.pem")
        media_type = media.PSA_TOKEN
    else:
        token, nonce, e = _cca_case(
            vector, "veraison-e2e-cca-evidence", "veraison-e2e-cpak-pub.pem"
        )
        media_type = media.CCA_TOKEN
    data = bytearray(token)
    for pos, byte in edits:
        data[pos % len(data)] = byte
    _appraise_anything(bytes(data), media_type, e, nonce)


def test_random_nonce_never_passes(kit: Kit) -> None:
    for _ in range(20):
        outcome = _appraise(kit, nonce=os.urandom(32))
        assert _failure(outcome)["check"] == "NonceMismatch"


def test_a_policy_can_require_a_vtee_for_a_module(kit: Kit) -> None:
    """A vTEE is part of the identity a policy judges (this evidence is from 'default')."""

    def pinned(vtees: str) -> Policy:
        return compile_policy(
            "pinned",
            "package veritee\nimport rego.v1\n"
            f"allowed := {{{vtees}}}\n"
            "executables.module := 96 if not input.submods.platform.claims"
            '["vtee-name"] in allowed\n',
        )

    refused = _appraise(kit, policy=pinned('"tenant-a", "tenant-b"'))
    assert refused.result.submods["module"].status == "contraindicated"
    accepted = _appraise(kit, policy=pinned('"default"'))
    assert accepted.result.submods["module"].status == "affirming"


# -- what the verifier remembers between appraisals --------------------------------------------


def _same_vtee(first: bytes, other: bytes) -> bytes:
    """``other``'s module token under ``first``'s platform and vtee tokens: the same vTEE,
    as every module of a running vTEE presents it."""
    a, b = Evidence.decode(first), Evidence.decode(other)
    return Evidence(a.platform, a.vtee, b.module).encode()


def test_remembered_links_still_check_the_module_token_nonce_and_validity(kit: Kit) -> None:
    e = kit.endorsements()
    first = kit.evidence()
    assert _appraise(kit, first, e=e).status == "affirming"
    assert len(e.links) == 1
    again = _same_vtee(first, kit.evidence())
    assert _appraise(kit, again, e=e).status == "affirming"
    assert len(e.links) == 1  # the device -> vTEE links were not verified twice
    # What changes per appraisal is still checked on a remembered link:
    _assert_failed(
        _appraise(kit, _same_vtee(first, kit.evidence(bytes(32))), e=e), "NonceMismatch", 99
    )
    forged = _same_vtee(first, kit.evidence(module_signer=_key()))
    _assert_failed(_appraise(kit, forged, e=e), "BadSignature", 99)
    later = _context(e, now=NOW + dt.timedelta(days=400))
    _assert_failed(appraise(again, MEDIA_TYPE, NONCE, later), "UntrustedDevice", 97)


def test_a_remembered_link_is_refused_once_its_device_or_ca_is_revoked(kit: Kit) -> None:
    first = kit.evidence()
    links = LinkCache()
    anchors = TrustAnchors(kit.endorsements().cas)
    verify(first, anchors, nonce=NONCE, now=NOW, links=links)
    assert len(links) == 1
    again = _same_vtee(first, kit.evidence())
    device_revoked = TrustAnchors(anchors.cas, revoked_devices=frozenset({kit.ueid}))
    with pytest.raises(UntrustedDevice, match=r"device .* is revoked"):
        verify(again, device_revoked, nonce=NONCE, now=NOW, links=links)
    ca_key = certs.key_id(kit.ca)  # CAs are revoked by key
    ca_revoked = TrustAnchors(anchors.cas, revoked_cas=frozenset({ca_key}))
    with pytest.raises(UntrustedDevice, match=r"CA .* is revoked"):
        verify(again, ca_revoked, nonce=NONCE, now=NOW, links=links)
    verify(again, anchors, nonce=NONCE, now=NOW, links=links)  # and nothing else changed


def test_a_link_that_failed_is_not_remembered(kit: Kit) -> None:
    e = kit.endorsements()
    bad = kit.evidence(platform_signer=_key())
    _assert_failed(_appraise(kit, bad, e=e), "BadSignature", 99)
    _assert_failed(_appraise(kit, bad, e=e), "BadSignature", 99)
    assert len(e.links) == 0


def test_remembered_links_stay_with_their_snapshot(kit: Kit) -> None:
    first = kit.evidence()
    trusted = kit.endorsements()
    assert _appraise(kit, first, e=trusted).status == "affirming"
    # A snapshot that no longer trusts the CA has its own, empty memory: the device fails.
    _assert_failed(_appraise(kit, first, e=kit.endorsements(cas=[])), "UntrustedDevice", 97)


IMPURE_POLICY = """\
package veritee

import rego.v1

hardware.platform := 96 if time.now_ns() < 0
"""


def test_a_pure_policy_remembers_decisions_and_an_impure_one_asks_each_time(kit: Kit) -> None:
    pure, impure = Policy("p", DEFAULT_POLICY), Policy("i", IMPURE_POLICY)
    assert pure.pure and not impure.pure
    e = kit.endorsements()
    emulated = _appraise(kit, kit.evidence(lifecycle="emulated"), policy=pure, e=e)
    secured = _appraise(kit, kit.evidence(), policy=pure, e=e)
    # Remembered per input: a different device state is decided afresh.
    assert (emulated.status, secured.status) == ("warning", "affirming")
    value = {"scheme": "veritee", "submods": {"platform": {"claims": {"lifecycle": "emulated"}}}}
    assert pure.judge(value) is pure.judge(value)
    assert impure.judge(value) is not impure.judge(value)


# -- rollback protection (issue 18, attack 9) -------------------------------------------------

REQUIRE_ROLLBACK = Policy(
    "needs-rollback",
    "package veritee\nimport rego.v1\nrequire_rollback_protection := true\n",
)


@pytest.mark.parametrize("kind", ["rpmb", "tpm-nv"])
def test_hardware_rollback_protection_satisfies_a_policy_requiring_it(kit: Kit, kind: str) -> None:
    evidence = kit.evidence(rollback_protection=kind, hwmodel="test-board")
    outcome = _appraise(kit, evidence, policy=REQUIRE_ROLLBACK)
    assert outcome.status == "affirming"
    assert _claims(outcome, "platform")["rollback-protection"] == kind
    ext = outcome.result.submods["module"].extensions
    assert ext["ear.veritee.rollback-protection"] == kind


@pytest.mark.parametrize("kind", ["none", "host-file"])
def test_rollback_protection_the_host_can_undo_is_refused_when_required(
    kit: Kit, kind: str
) -> None:
    required = _appraise(kit, kit.evidence(rollback_protection=kind), policy=REQUIRE_ROLLBACK)
    assert required.status == "contraindicated"
    assert _vector(required, "platform")["storage-opaque"] == 96
    assert any("requires rollback protection in hardware" in r for r in required.reasons)
    # Not required (the default policy): accepted, the result saying what it is.
    default = _appraise(kit, kit.evidence(rollback_protection=kind))
    assert default.status == "affirming"
    assert default.result.submods["platform"].extensions["ear.veritee.rollback-protection"] == kind


@pytest.mark.parametrize(
    ("lifecycle", "hwmodel"),
    [("emulated", "test-board"), ("secured", HWMODEL_EMULATED), ("emulated", HWMODEL_EMULATED)],
)
def test_an_emulated_device_claiming_rpmb_is_appraised_as_host_file(
    kit: Kit, lifecycle: str, hwmodel: str
) -> None:
    """The emulated device's counters are a file whatever its token says."""
    evidence = kit.evidence(lifecycle=lifecycle, rollback_protection="rpmb", hwmodel=hwmodel)
    outcome = _appraise(kit, evidence, policy=REQUIRE_ROLLBACK)
    assert outcome.status == "contraindicated"
    assert _claims(outcome, "platform")["rollback-protection"] == "host-file"
    assert any("reports 'rpmb' rollback protection" in r for r in outcome.reasons)


def test_an_unknown_rollback_protection_is_malformed(kit: Kit) -> None:
    outcome = _appraise(kit, kit.evidence(rollback_protection="trust-me"))
    _assert_failed(outcome, "MalformedToken", 99)
    assert "rollback protection" in _failure(outcome)["reason"]


def test_a_non_boolean_rollback_knob_fails_the_policy(kit: Kit) -> None:
    odd = Policy("odd", 'package veritee\nrequire_rollback_protection := "yes"\n')
    outcome = _appraise(kit, policy=odd)
    assert outcome.status == "contraindicated"
    assert outcome.failure is not None and outcome.failure.check == "PolicyFailed"


def test_psa_evidence_does_not_say_so_is_refused_when_required(vector: Vector) -> None:
    """PSA and CCA tokens carry no rollback-protection claim: a policy that requires it
    refuses them rather than assume."""
    token, nonce, e = _psa_case(vector, "tfm-psa-2_0_0-sign1", "tfm-iak-pub.pem")
    outcome = appraise(token, media.PSA_TOKEN, nonce, _context(e, REQUIRE_ROLLBACK))
    assert outcome.status == "contraindicated"
    assert _vector(outcome, "PSA_IOT")["storage-opaque"] == 96
    assert any("evidence does not say which it has" in r for r in outcome.reasons)


# -- results as Veraison emits them -----------------------------------------------------------
#
# veraison/psatoken (P2Claims, SwComponent) and veraison/ccatoken (platform and realm Claims)
# name each CBOR claim in JSON; Veraison's psa-iot and arm-cca plugins put those JSON objects,
# bytes in padded standard base64 (Go's encoding/json), under ear.veraison.annotated-evidence of
# submods PSA_IOT, CCA_SSD_PLATFORM and CCA_REALM. Written out here from the CBOR keys, apart
# from the code under test.
_PSA_JSON = {
    "265": "eat-profile",
    "2394": "psa-client-id",
    "2395": "psa-security-lifecycle",
    "2396": "psa-implementation-id",
    "2397": "psa-boot-seed",
    "2398": "psa-certification-reference",
    "2399": "psa-software-components",
    "10": "psa-nonce",
    "256": "psa-instance-id",
    "2400": "psa-verification-service-indicator",
}
_PLATFORM_JSON = {
    "265": "cca-platform-profile",
    "10": "cca-platform-challenge",
    "2396": "cca-platform-implementation-id",
    "256": "cca-platform-instance-id",
    "2401": "cca-platform-config",
    "2395": "cca-platform-lifecycle",
    "2399": "cca-platform-sw-components",
    "2400": "cca-platform-service-indicator",
    "2402": "cca-platform-hash-algo-id",
}
_REALM_JSON = {
    "265": "cca-realm-profile",
    "10": "cca-realm-challenge",
    "44235": "cca-realm-personalization-value",
    "44238": "cca-realm-initial-measurement",
    "44239": "cca-realm-extensible-measurements",
    "44236": "cca-realm-hash-algo-id",
    "44237": "cca-realm-public-key",
    "44240": "cca-realm-public-key-hash-algo-id",
}
_COMPONENT_JSON = {
    "1": "measurement-type",
    "2": "measurement-value",
    "4": "version",
    "5": "signer-id",
    "6": "measurement-description",
}
# The claims whose CBOR values are byte strings (the vectors' JSON shows them as hex).
_BYTES = {"2396", "2397", "10", "256", "2401", "44235", "44238", "44239", "44237"}
_COMPONENT_BYTES = {"2", "5"}


def _go_b64(hex_text: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_text)).decode()


def _as_veraison(raw: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "2399":
            value = [
                {
                    _COMPONENT_JSON[k]: _go_b64(v) if k in _COMPONENT_BYTES else v
                    for k, v in component.items()
                }
                for component in value
            ]
        elif key in _BYTES:
            value = [_go_b64(v) for v in value] if isinstance(value, list) else _go_b64(value)
        out[names[key]] = value
    return out


def test_psa_annotated_evidence_is_veraisons(vector: Vector) -> None:
    token, nonce, e = _psa_case(vector, "veraison-e2e-psa-evidence", "veraison-e2e-iak-pub.pem")
    outcome = appraise(token, media.PSA_TOKEN, nonce, _context(e))
    claims = outcome.result.to_json()
    assert list(claims["submods"]) == ["PSA_IOT"]
    submod = claims["submods"]["PSA_IOT"]
    raw = _expected(vector, "psa/veraison-e2e-psa-evidence")["raw_claims"]
    assert submod["ear.veraison.annotated-evidence"] == _as_veraison(raw, _PSA_JSON)
    # Veritee's own reading is beside it, under its own name only.
    assert submod[VERITEE_CLAIMS]["lifecycle"] == "secured"
    assert all(k.startswith(("ear.veritee.", "ear.veraison.", "ear.")) for k in submod)


def test_cca_annotated_evidence_is_veraisons(vector: Vector) -> None:
    token, nonce, e = _cca_case(vector, "veraison-e2e-cca-evidence", "veraison-e2e-cpak-pub.pem")
    outcome = appraise(token, media.CCA_TOKEN, nonce, _context(e))
    submods = outcome.result.to_json()["submods"]
    assert sorted(submods) == ["CCA_REALM", "CCA_SSD_PLATFORM"]
    expected = _expected(vector, "cca/veraison-e2e-cca-evidence")
    platform = submods["CCA_SSD_PLATFORM"]["ear.veraison.annotated-evidence"]
    realm = submods["CCA_REALM"]["ear.veraison.annotated-evidence"]
    assert platform == _as_veraison(expected["platform"]["raw_claims"], _PLATFORM_JSON)
    assert realm == _as_veraison(expected["realm"]["raw_claims"], _REALM_JSON)
    # What Trustee's CCA verifier decodes: the realm challenge, padded standard base64.
    assert base64.b64decode(realm["cca-realm-challenge"], validate=True) == nonce
