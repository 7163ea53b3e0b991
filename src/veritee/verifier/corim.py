"""CoRIM (tag 501) and CoMID (tag 506) endorsements, decoded to the verifier's one model.

A CoRIM comes from a network peer holding the provisioning token (or from a manufacturer's
file), so this codec is strict and bounded: every limit is a named constant, every failed
check its own error (``veritee.verifier.errors.Corim*``), and nothing here touches the store:
:func:`decode` returns a :class:`~veritee.verifier.endorsements.Deployment` that the caller
applies in one transaction, so a CoRIM that fails anywhere changes nothing.

Profiles understood (the triples each one maps, as Veraison's scheme plugins read them):

- PSA (``tag:arm.com,2025:psa#1.0.0``, ``http://arm.com/psa/iot/1``) and CCA platform
  (``http://arm.com/cca/ssd/1``): attester-verification-keys (IAK / CPAK for an instance id,
  tag 550 UEID, key tag 554 PEM) become key trust anchors; reference values whose measurement
  key is a psa-refval-id (tag 601) become ``boot`` reference values (label, version, digests).
  The CCA platform-config value (tag 602) is decoded but not appraised (Veritee's model has
  no config match).
- CCA realm (``http://arm.com/cca/realm/1``): reference values whose environment instance is
  the RIM (tag 560) become ``realm`` reference values; the REMs and personalization value are
  decoded and size-checked, and only the RIM is matched at appraisal.
- Veritee (``tag:veritee.dev,2026:veritee#1``, see docs/verifier.md): reference values of
  class vendor ``veritee.dev``, model ``boot`` or ``module``, a text measurement key naming the
  boot stage / module; attester-verification-keys of model ``device-ca`` carrying manufacturer
  CA certificates (tag 555 PEM).

Endorsed-values triples are decoded and counted but not used at appraisal (no scheme here
takes endorsed values); any other triple, tag or CoRIM field is refused rather than ignored.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.evidence import cose
from veritee.evidence.errors import BadSignature, MalformedToken
from veritee.verifier import endorsements as parse
from veritee.verifier.endorsements import (
    MAX_INSTANCE_ID_BYTES,
    MAX_NAME_CHARS,
    CaAnchor,
    Deployment,
    KeyAnchor,
    ReferenceValue,
    RefKind,
)
from veritee.verifier.errors import (
    CorimBadSignature,
    CorimMalformed,
    CorimSignerMissing,
    CorimUnknownProfile,
    CorimUnsigned,
    CorimUnsupported,
    ProvisioningError,
)
from veritee.verifier.media import MediaType, Scheme

_T = TypeVar("_T")

# -- limits: a CoRIM is attacker-sized input from whoever holds the provisioning token --------

# The whole CoRIM (signed or not): the provisioning API's own body limit.
MAX_CORIM_BYTES = 1024 * 1024
# CBOR nesting: a CoRIM's deepest legitimate path is about 10 levels; a deeper one is a stack
# attack on the walker.
MAX_DEPTH = 24
# CBOR items in one decoded CoRIM or CoMID: bounds the work of walking it (a million tiny
# items fit in a megabyte).
MAX_ITEMS = 100_000
# CoMIDs in one CoRIM, triples of one kind in one CoMID, measurements in one triple, keys in
# one key triple, digests in one measurement: each far above Veraison's and a manufacturer's
# files, each stopping one multiplicative blow-up of the store.
MAX_TAGS = 64
MAX_TRIPLES = 1024
MAX_MEASUREMENTS = 256
MAX_KEYS = 16
MAX_DIGESTS = 8
# Everything one CoRIM may add to the store.
MAX_ENDORSEMENTS = 4096

TAG_CORIM = 501
TAG_COMID = 506
TAG_URI = 32
TAG_UUID = 37
TAG_OID = 111
TAG_UEID = 550
TAG_BYTES = 560
TAG_PKIX_KEY = 554
TAG_PKIX_CERT = 555
TAG_IMPL_ID = 600
TAG_PSA_REFVAL_ID = 601
TAG_CCA_CONFIG_ID = 602

PSA_PROFILE = "tag:arm.com,2025:psa#1.0.0"
PSA_IOT_PROFILE = "http://arm.com/psa/iot/1"
CCA_PLATFORM_PROFILE = "http://arm.com/cca/ssd/1"
CCA_REALM_PROFILE = "http://arm.com/cca/realm/1"
VERITEE_PROFILE = "tag:veritee.dev,2026:veritee#1"
# profile URI -> (scheme, family): a media type's profile must be of the CoRIM's family.
PROFILES: dict[str, tuple[Scheme, str]] = {
    PSA_PROFILE: ("psa", "psa"),
    PSA_IOT_PROFILE: ("psa", "psa"),
    CCA_PLATFORM_PROFILE: ("cca", "cca-platform"),
    CCA_REALM_PROFILE: ("cca", "cca-realm"),
    VERITEE_PROFILE: ("veritee", "veritee"),
}

UNSIGNED_MEDIA_TYPE = "application/corim-unsigned+cbor"
LEGACY_MEDIA_TYPE = "application/rim+cbor"
SIGNED_MEDIA_TYPE = "application/rim+cose"
SIGNED_MEDIA_TYPE_ALT = "application/corim-signed+cbor"
MEDIA_TYPES = (UNSIGNED_MEDIA_TYPE, LEGACY_MEDIA_TYPE, SIGNED_MEDIA_TYPE, SIGNED_MEDIA_TYPE_ALT)

VERITEE_VENDOR = "veritee.dev"
# A CCA realm's integrity registers beyond the RIM, in evidence order.
REALM_REMS = ("rem0", "rem1", "rem2", "rem3")
VERITEE_CA_MODEL = "device-ca"

# Hash algorithms of the named-information registry -> digest size.
HASH_SIZES = {1: 32, 7: 48, 8: 64}
_HASH_IDS = {32: 1, 48: 7, 64: 8}

# CoRIM map keys (draft-ietf-rats-corim): id, tags, dependent-rims, profile, validity,
# entities.
_CORIM_KEYS = frozenset(range(6))
# CoMID map keys: language, tag-identity, entities, linked-tags, triples.
_COMID_KEYS = frozenset({0, 1, 2, 3, 4})
# Triples: reference-values, endorsed-values, attester-verification-keys.
_REFERENCE, _ENDORSED, _ATTEST_KEY = 0, 1, 3
_TRIPLE_KEYS = frozenset({_REFERENCE, _ENDORSED, _ATTEST_KEY})


@dataclass(frozen=True)
class Corim:
    """A decoded CoRIM: what it endorses, as the verifier's own model."""

    id: str
    profile: str
    scheme: Scheme
    deployment: Deployment
    signed: bool = False
    endorsed_values: int = 0  # endorsed-values triples decoded but not used

    def summary(self) -> dict[str, Any]:
        return {
            "corim-id": self.id,
            "profile": self.profile,
            "signed": self.signed,
            "trust-anchors": len(self.deployment.anchors),
            "reference-values": len(self.deployment.references),
            "endorsed-values-ignored": self.endorsed_values,
        }


# -- decoding ----------------------------------------------------------------------------------


def decode(
    data: bytes,
    *,
    media_type: str | None = None,
    signer: ec.EllipticCurvePublicKey | None = None,
) -> Corim:
    """Decode and check a CoRIM, signed (COSE_Sign1, tag 18, around tag 501) or not.

    With ``signer`` set, only a CoRIM signed by that key is taken; without it, a signed CoRIM
    is refused (its signature could not be checked, and taking it would claim it was).
    """
    declared = _declared_profile(media_type)
    if len(data) > MAX_CORIM_BYTES:
        raise CorimMalformed(f"the CoRIM is {len(data)} bytes, over {MAX_CORIM_BYTES}")
    value = _loads(data, "the CoRIM")
    signed = isinstance(value, cbor2.CBORTag) and value.tag == cose.TAG_SIGN1
    if signed:
        if signer is None:
            raise CorimSignerMissing(
                "signed CoRIM but no signer key configured: start the verifier with "
                "--corim-signer KEY.pem to take signed CoRIMs"
            )
        try:
            msg = cose.decode(data, what="signed CoRIM")
            cose.verify(msg, signer, what="signed CoRIM")
        except MalformedToken as exc:
            raise CorimMalformed(str(exc)) from None
        except BadSignature as exc:
            raise CorimBadSignature(f"{exc} (the configured CoRIM signer)") from None
        value = _loads(msg.payload, "the signed CoRIM's payload")
    elif signer is not None:
        raise CorimUnsigned(
            "this verifier takes only CoRIMs signed by its configured signer; this one is unsigned"
        )
    if not isinstance(value, cbor2.CBORTag) or value.tag != TAG_CORIM:
        raise CorimMalformed("the body is not a CoRIM (CBOR tag 501)")
    body = _map(value.value, "the CoRIM", _CORIM_KEYS)
    corim_id = _corim_id(body.get(0))
    profile = _profile(body.get(3), declared)
    scheme, family = PROFILES[profile]
    _validity(body.get(4))
    tags = body.get(1)
    if not isinstance(tags, list | tuple) or not tags:
        raise CorimMalformed("the CoRIM has no tags (key 1 must list its CoMIDs)")
    if len(tags) > MAX_TAGS:
        raise CorimMalformed(f"the CoRIM holds {len(tags)} tags; at most {MAX_TAGS} accepted")
    anchors: list[CaAnchor | KeyAnchor] = []
    refs: list[ReferenceValue] = []
    endorsed = 0
    for i, tag in enumerate(tags):
        where = f"CoMID #{i}"
        if not isinstance(tag, cbor2.CBORTag) or tag.tag != TAG_COMID:
            shown = tag.tag if isinstance(tag, cbor2.CBORTag) else type(tag).__name__
            raise CorimUnsupported(f"{where}: tag {shown} is not a CoMID (506); only CoMIDs taken")
        if not isinstance(tag.value, bytes):
            raise CorimMalformed(f"{where} is not a byte string holding a CoMID")
        comid = _map(_loads(tag.value, where), where, _COMID_KEYS)
        triples = _map(comid.get(4), f"{where} triples", _TRIPLE_KEYS)
        for j, triple in enumerate(_items(triples.get(_ATTEST_KEY, []), MAX_TRIPLES, where)):
            anchors.extend(_key_triple(triple, scheme, family, f"{where} key triple #{j}"))
        for j, triple in enumerate(_items(triples.get(_REFERENCE, []), MAX_TRIPLES, where)):
            refs.extend(_reference_triple(triple, scheme, family, f"{where} reference #{j}"))
        for j, triple in enumerate(_items(triples.get(_ENDORSED, []), MAX_TRIPLES, where)):
            _environment_and_measurements(triple, f"{where} endorsed values #{j}")
            endorsed += 1
        if len(anchors) + len(refs) > MAX_ENDORSEMENTS:
            raise CorimMalformed(f"the CoRIM endorses more than {MAX_ENDORSEMENTS} items")
    if not anchors and not refs:
        raise CorimMalformed("the CoRIM endorses nothing this verifier appraises")
    return Corim(
        id=corim_id,
        profile=profile,
        scheme=scheme,
        deployment=Deployment(anchors=tuple(anchors), references=tuple(refs)),
        signed=signed,
        endorsed_values=endorsed,
    )


def _declared_profile(media_type: str | None) -> str | None:
    if media_type is None:
        return None
    from veritee.verifier.errors import UnsupportedMediaType

    parsed = MediaType.parse(media_type)
    if parsed.essence not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"endorsements of type {media_type[:80]!r} are not taken; send one of "
            f"{', '.join(MEDIA_TYPES)}"
        )
    params = dict(parsed.params)
    profile = params.get("profile")
    if profile is not None and profile not in PROFILES:
        raise CorimUnknownProfile(
            f"profile {profile[:80]!r} is not one this verifier knows: {', '.join(PROFILES)}"
        )
    return profile


def _loads(data: bytes, what: str) -> Any:
    try:
        value = cbor2.loads(data, allow_duplicate_keys=False)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        reason = "truncated" if "premature end" in str(exc) else type(exc).__name__
        raise CorimMalformed(f"{what} is not valid CBOR ({reason})") from None
    _bounded(value, what)
    return value


def _bounded(value: Any, what: str) -> None:
    """Refuse CBOR nested deeper than MAX_DEPTH or holding more than MAX_ITEMS items."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    items = 0
    while stack:
        node, depth = stack.pop()
        items += 1
        if items > MAX_ITEMS:
            raise CorimMalformed(f"{what} holds more than {MAX_ITEMS} CBOR items")
        if depth > MAX_DEPTH:
            raise CorimMalformed(f"{what} nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, cbor2.CBORTag):
            stack.append((node.value, depth + 1))
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, Mapping):
            stack.extend((k, depth + 1) for k in node)
            stack.extend((v, depth + 1) for v in node.values())


def _map(value: Any, what: str, known: frozenset[Any]) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise CorimMalformed(f"{what} is not a CBOR map")
    unknown = sorted(repr(k)[:20] for k in value if k not in known)
    if unknown:
        raise CorimUnsupported(f"{what} has field(s) this verifier does not take: {unknown[:5]}")
    return value


def _items(value: Any, limit: int, what: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise CorimMalformed(f"{what}: expected a CBOR array")
    if len(value) > limit:
        raise CorimMalformed(f"{what}: {len(value)} entries, at most {limit} accepted")
    return list(value)


def _corim_id(value: Any) -> str:
    if isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS:
        return value
    if isinstance(value, cbor2.CBORTag) and value.tag == TAG_UUID:
        value = value.value
    if isinstance(value, bytes) and len(value) == 16:
        return str(uuid.UUID(bytes=value))
    raise CorimMalformed("the CoRIM id (key 0) must be text or a 16-byte UUID")


def _profile(value: Any, declared: str | None) -> str:
    if isinstance(value, cbor2.CBORTag) and value.tag == TAG_URI:
        value = value.value
    if value is None:
        if declared is None:
            raise CorimUnknownProfile(
                "the CoRIM names no profile (key 3) and the Content-Type none either"
            )
        return declared
    if not isinstance(value, str):
        raise CorimUnknownProfile("the CoRIM's profile is not a URI this verifier knows")
    if value not in PROFILES:
        raise CorimUnknownProfile(
            f"profile {value[:80]!r} is not one this verifier knows: {', '.join(PROFILES)}"
        )
    if declared is not None and PROFILES[declared][1] != PROFILES[value][1]:
        raise CorimUnknownProfile(
            f"the Content-Type says profile {declared!r} but the CoRIM is {value!r}"
        )
    return value


def _validity(value: Any) -> None:
    # Decoded and checked for shape; not enforced against the clock (as Veraison's
    # provisioning does not), the operator's token being what authorises the submission.
    if value is None:
        return
    v = _map(value, "the CoRIM validity", frozenset({0, 1}))
    dates = [v.get(k) for k in (0, 1) if k in v]
    if not all(isinstance(d, dt.datetime) for d in dates):
        raise CorimMalformed("the CoRIM validity must hold dates (CBOR tag 1)")
    if 0 in v and 1 in v and v[0] > v[1]:
        raise CorimMalformed("the CoRIM validity ends before it begins")


def _environment_and_measurements(triple: Any, what: str) -> tuple[Mapping[Any, Any], list[Any]]:
    if not isinstance(triple, list | tuple) or len(triple) != 2:
        raise CorimMalformed(f"{what} is not a [environment, measurements] pair")
    env = _map(triple[0], f"{what} environment", frozenset({0, 1, 2}))
    return env, _items(triple[1], MAX_MEASUREMENTS, f"{what} measurements")


def _class(env: Mapping[Any, Any], what: str) -> Mapping[Any, Any]:
    if 0 not in env:
        return {}
    return _map(env[0], f"{what} class", frozenset({0, 1, 2, 3, 4}))


def _instance_id(env: Mapping[Any, Any], what: str) -> bytes:
    inst = env.get(1)
    if not isinstance(inst, cbor2.CBORTag) or inst.tag != TAG_UEID:
        raise CorimMalformed(f"{what}: the environment's instance must be a UEID (tag 550)")
    if not isinstance(inst.value, bytes) or not 0 < len(inst.value) <= MAX_INSTANCE_ID_BYTES:
        raise CorimMalformed(f"{what}: the UEID must be 1 to {MAX_INSTANCE_ID_BYTES} bytes")
    return inst.value


def _key_triple(triple: Any, scheme: Scheme, family: str, what: str) -> list[CaAnchor | KeyAnchor]:
    if not isinstance(triple, list | tuple) or len(triple) != 2:
        raise CorimMalformed(f"{what} is not an [environment, keys] pair")
    env = _map(triple[0], f"{what} environment", frozenset({0, 1, 2}))
    keys = _items(triple[1], MAX_KEYS, f"{what} keys")
    if not keys:
        raise CorimMalformed(f"{what} lists no keys")
    out: list[CaAnchor | KeyAnchor] = []
    if family == "veritee":
        if _class(env, what).get(2) != VERITEE_CA_MODEL:
            raise CorimUnsupported(f"{what}: a Veritee key triple is of model {VERITEE_CA_MODEL!r}")
        for key in keys:
            if not isinstance(key, cbor2.CBORTag) or key.tag != TAG_PKIX_CERT:
                raise CorimUnsupported(f"{what}: a Veritee CA is a PEM certificate (tag 555)")
            out.extend(_checked(what, parse.ca_anchors_from_pem, _text(key.value, what)))
        return out
    if family == "cca-realm":
        raise CorimUnsupported(f"{what}: a CCA realm CoRIM carries no verification keys")
    instance_id = _instance_id(env, what)
    for key in keys:
        if not isinstance(key, cbor2.CBORTag) or key.tag != TAG_PKIX_KEY:
            raise CorimUnsupported(f"{what}: a {scheme.upper()} key is a PEM public key (tag 554)")
        pem = _text(key.value, what)
        entry = {"scheme": scheme, "key": pem, "instance-id": instance_id.hex()}
        out.append(_checked(what, parse.key_anchor, entry))
    return out


def _reference_triple(triple: Any, scheme: Scheme, family: str, what: str) -> list[ReferenceValue]:
    env, measurements = _environment_and_measurements(triple, what)
    out: list[ReferenceValue] = []
    if family == "cca-realm":
        rim = env.get(1)
        if not isinstance(rim, cbor2.CBORTag) or rim.tag != TAG_BYTES:
            raise CorimMalformed(f"{what}: a realm's environment instance is its RIM (tag 560)")
        rim_bytes = rim.value
        if not isinstance(rim_bytes, bytes) or len(rim_bytes) not in parse.MEASUREMENT_SIZES:
            raise CorimMalformed(f"{what}: the RIM must be a 32, 48 or 64-byte digest")
        if len(measurements) != 1:
            raise CorimMalformed(f"{what}: a realm reference holds one measurement")
        mval = _mval(measurements[0], f"{what} measurement")
        registers = _registers(mval, what)
        unknown = sorted(set(registers) - {"rim", *REALM_REMS})
        if unknown:
            raise CorimUnsupported(f"{what}: integrity registers {unknown[:5]} are not a realm's")
        if "rim" in registers and registers["rim"] != [rim_bytes]:
            raise CorimMalformed(f"{what}: the 'rim' register is not the environment's RIM")
        named = [n for n in REALM_REMS if n in registers]
        if named and named != list(REALM_REMS):
            raise CorimMalformed(f"{what}: a realm's REMs are endorsed all four or none")
        for n in named:
            if len(registers[n]) != 1:
                raise CorimMalformed(f"{what}: register {n!r} must hold one digest")
        rpv = mval.get(4)
        if isinstance(rpv, cbor2.CBORTag) and rpv.tag == TAG_BYTES:
            rpv = rpv.value
        if rpv is not None and (not isinstance(rpv, bytes) or len(rpv) != 64):
            raise CorimMalformed(f"{what}: the personalization value (raw value) is 64 bytes")
        entry: dict[str, Any] = {
            "scheme": scheme,
            "kind": "realm",
            "name": "",
            "version": _version(mval, what),
            "measurement": rim_bytes.hex(),
            "rems": [registers[n][0].hex() for n in named],
        }
        if rpv is not None:
            entry["personalization-value"] = rpv.hex()
        refs: list[ReferenceValue] = _checked(what, parse.reference_values, entry)
        return refs
    klass = _class(env, what)
    model = klass.get(2)
    implementation = b""
    if family != "veritee":
        class_id = klass.get(0)
        if not isinstance(class_id, cbor2.CBORTag) or class_id.tag != TAG_IMPL_ID:
            raise CorimMalformed(f"{what}: the class id must be an implementation id (tag 600)")
        if not isinstance(class_id.value, bytes) or not 0 < len(class_id.value) <= 64:
            raise CorimMalformed(f"{what}: the implementation id must be 1 to 64 bytes")
        implementation = class_id.value
    for k, m in enumerate(measurements):
        where = f"{what} measurement #{k}"
        if not isinstance(m, Mapping):
            raise CorimMalformed(f"{where} is not a map")
        mkey = m.get(0)
        mval = _mval(m, where)
        if family == "veritee":
            if model not in ("boot", "module"):
                raise CorimUnsupported(f"{what}: a Veritee reference is of model boot or module")
            kind = cast(RefKind, model)
            name = _text(mkey, where)
            version = _version(mval, where)
        elif isinstance(mkey, cbor2.CBORTag) and mkey.tag == TAG_PSA_REFVAL_ID:
            refval = _map(mkey.value, f"{where} refval id", frozenset({1, 4, 5}))
            kind = "boot"
            name = _text(refval.get(1, ""), where, allow_empty=True)
            version = _text(refval.get(4, ""), where, allow_empty=True)
        elif (
            family == "cca-platform"
            and isinstance(mkey, cbor2.CBORTag)
            and mkey.tag == TAG_CCA_CONFIG_ID
        ):
            continue  # the platform config: decoded, not appraised (see the module's doc)
        else:
            raise CorimUnsupported(f"{where}: measurement key not of the {family} profile")
        for digest in _digests(mval.get(2), where):
            out.append(_ref(scheme, kind, name, digest, version, where, implementation))
    return out


def _mval(m: Any, what: str) -> Mapping[Any, Any]:
    if not isinstance(m, Mapping) or 1 not in m:
        raise CorimMalformed(f"{what} has no measurement values (key 1)")
    return _map(m[1], f"{what} values", frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14}))


def _version(mval: Mapping[Any, Any], what: str) -> str:
    v = mval.get(0)
    if v is None:
        return ""
    version = _map(v, f"{what} version", frozenset({0, 1}))
    return _text(version.get(0, ""), what, allow_empty=True)


def _digests(value: Any, what: str) -> list[bytes]:
    out = []
    for d in _items(value, MAX_DIGESTS, f"{what} digests"):
        if not isinstance(d, list | tuple) or len(d) != 2 or d[0] not in HASH_SIZES:
            raise CorimMalformed(
                f"{what}: a digest is [sha-256 (1) | sha-384 (7) | sha-512 (8), bytes]"
            )
        if not isinstance(d[1], bytes) or len(d[1]) != HASH_SIZES[d[0]]:
            raise CorimMalformed(f"{what}: a digest's size does not match its algorithm")
        out.append(d[1])
    if not out:
        raise CorimMalformed(f"{what} has no digests")
    return out


def _registers(mval: Mapping[Any, Any], what: str) -> dict[str, list[bytes]]:
    regs = mval.get(14, {})
    if not isinstance(regs, Mapping) or len(regs) > MAX_DIGESTS:
        raise CorimMalformed(f"{what}: integrity registers must be a small map")
    return {_text(k, what): _digests(v, f"{what} register") for k, v in regs.items()}


def _ref(
    scheme: Scheme,
    kind: RefKind,
    name: str,
    measurement: bytes,
    version: str,
    what: str,
    implementation: bytes = b"",
) -> ReferenceValue:
    entry = {
        "scheme": scheme,
        "kind": kind,
        "name": name,
        "version": version,
        "measurement": measurement.hex(),
    }
    if implementation:
        entry["implementation-id"] = implementation.hex()
    refs: list[ReferenceValue] = _checked(what, parse.reference_values, entry)
    return refs[0]


def _text(value: Any, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > 64 * 1024 or (not value and not allow_empty):
        raise CorimMalformed(f"{what}: expected text")
    return value


def _checked(what: str, make: Callable[..., _T], *args: Any) -> _T:
    """``make(*args)``, its ProvisioningError named after where in the CoRIM it arose."""
    try:
        return make(*args)
    except CorimMalformed:
        raise
    except ProvisioningError as exc:
        raise CorimMalformed(f"{what}: {exc}") from None


# -- encoding Veritee's profile ----------------------------------------------------------------


def make(
    references: Iterable[ReferenceValue],
    cas: Iterable[CaAnchor] = (),
    *,
    corim_id: str | None = None,
    signer: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """A CoRIM of Veritee's profile holding ``references`` (boot stages, modules) and manufacturer
    ``cas``; COSE_Sign1-signed when ``signer`` is given. :func:`decode` maps it back."""
    by_model: dict[str, list[dict[int, Any]]] = {"boot": [], "module": []}
    for rv in references:
        if rv.scheme != "veritee" or rv.kind not in by_model:
            raise ProvisioningError(
                f"Veritee's CoMID profile carries veritee boot and module values, not "
                f"{rv.scheme} {rv.kind}"
            )
        mval: dict[int, Any] = {2: [[_HASH_IDS[len(rv.measurement)], rv.measurement]]}
        if rv.version:
            mval[0] = {0: rv.version}
        by_model[rv.kind].append({0: rv.name, 1: mval})
    triples: dict[int, Any] = {}
    refs = [[{0: {1: VERITEE_VENDOR, 2: model}}, ms] for model, ms in by_model.items() if ms]
    if refs:
        triples[_REFERENCE] = refs
    certs = [cbor2.CBORTag(TAG_PKIX_CERT, ca.pem) for ca in cas]
    if certs:
        triples[_ATTEST_KEY] = [[{0: {1: VERITEE_VENDOR, 2: VERITEE_CA_MODEL}}, certs]]
    if not triples:
        raise ProvisioningError("nothing to put in the CoRIM")
    comid = {0: "en", 1: {0: uuid.uuid4().bytes}, 4: triples}
    corim = cbor2.CBORTag(
        TAG_CORIM,
        {
            0: corim_id or str(uuid.uuid4()),
            1: [cbor2.CBORTag(TAG_COMID, cbor2.dumps(comid))],
            3: VERITEE_PROFILE,
        },
    )
    payload = bytes(cbor2.dumps(corim))
    return payload if signer is None else cose.sign1(payload, signer)
