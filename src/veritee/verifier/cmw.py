"""Conceptual Message Wrappers (draft-ietf-rats-msg-wrap, RFC 9193 content formats): evidence
wrapped with its media type, as Veraison takes it.

A CMW *record* names what it carries: in CBOR ``[type, value]`` or ``[type, value, ind]``
(``type`` a media type string, ``value`` a byte string, ``ind`` a small bitmap of what the
value is), in JSON the same array with ``value`` in base64url. The verifier unwraps it and
appraises the value as evidence of that media type; the wrapper adds nothing to trust.

Not taken (each refused with its reason, in the signed result): the CBOR *tag* form and a
numeric (CoAP content-format) ``type``, which name evidence by a number no media type here
is registered under; CMW *collections* (maps of several wrappers) other than Veritee's own
evidence, which is one (its three tokens, each a record); a CMW inside a CMW.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import cbor2

from veritee.evidence import cose
from veritee.evidence.claims import (
    CMWC_TYPE_LABEL,
    MEDIA_TYPE,
    OLD_MEDIA_TYPE,
    PROFILE_EVIDENCE,
)
from veritee.evidence.errors import MalformedToken
from veritee.verifier.errors import UnsupportedMediaType
from veritee.verifier.media import (
    CMW_CBOR_TYPES,
    CMW_JSON_TYPES,
    MAX_MEDIA_TYPE_CHARS,
    MediaType,
)

__all__ = ["CBOR_TYPES", "JSON_TYPES", "MAX_INDICATOR", "MalformedCmw", "is_cmw", "unwrap"]

CBOR_TYPES = frozenset(CMW_CBOR_TYPES)
JSON_TYPES = frozenset(CMW_JSON_TYPES)
# The indicator is a bitmap of four defined bits (reference values, endorsements, evidence,
# attestation results); anything wider is not a CMW indicator.
MAX_INDICATOR = 31


class MalformedCmw(MalformedToken):
    """The body is not a CMW record this verifier unwraps."""


def is_cmw(media_type: str | None) -> bool:
    """Whether ``media_type`` (a Content-Type) names a CMW."""
    if not media_type or len(media_type) > MAX_MEDIA_TYPE_CHARS:
        return False
    essence = media_type.split(";", 1)[0].strip().lower()
    if essence in CBOR_TYPES and _is_veritee(media_type):
        return False  # Veritee's own evidence type: its scheme reads the collection itself
    return essence in CBOR_TYPES or essence in JSON_TYPES


def _is_veritee(media_type: str) -> bool:
    try:
        return MediaType.parse(media_type) == _VERITEE
    except UnsupportedMediaType:
        return False


def unwrap(body: bytes, media_type: str) -> tuple[str, bytes]:
    """The media type and bytes a CMW record carries; raise :class:`MalformedCmw`."""
    essence = MediaType.parse(media_type).essence
    record = _cbor_record(body) if essence in CBOR_TYPES else _json_record(body)
    if record is _VERITEE_COLLECTION:
        return OLD_MEDIA_TYPE, body  # appraised by the Veritee scheme, which reads both forms
    if not isinstance(record, list) or len(record) not in (2, 3):
        raise MalformedCmw("a CMW record is an array of a type, a value and an optional indicator")
    kind, value = record[0], record[1]
    if isinstance(kind, int) and not isinstance(kind, bool):
        raise MalformedCmw(
            f"CMW type {kind} is a CoAP content-format, which names no evidence type appraised "
            "here; send the media type as a string"
        )
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_MEDIA_TYPE_CHARS:
        raise MalformedCmw("the CMW type is not a media type string")
    if len(record) == 3:
        ind = record[2]
        if not isinstance(ind, int) or isinstance(ind, bool) or not 0 <= ind <= MAX_INDICATOR:
            raise MalformedCmw(f"the CMW indicator is not a bitmap in 0..{MAX_INDICATOR}")
    if essence in JSON_TYPES:
        value = _b64url(value)
    if not isinstance(value, bytes) or not value:
        raise MalformedCmw("the CMW value is not a non-empty byte string")
    if is_cmw(kind):
        raise MalformedCmw("a CMW inside a CMW is not unwrapped: send the evidence in one")
    return kind, value


def _cbor_record(body: bytes) -> Any:
    record = cose.loads(body, what="CMW")
    if isinstance(record, cbor2.CBORTag):
        raise MalformedCmw(
            f"CMW tag {record.tag} (the tag form) names evidence by a content-format number; "
            "send the array form with the media type"
        )
    if isinstance(record, dict):
        if record.get(CMWC_TYPE_LABEL) == PROFILE_EVIDENCE:
            return _VERITEE_COLLECTION  # Veritee's own evidence is such a collection
        raise MalformedCmw(
            "CMW collections are not taken, except Veritee evidence (type "
            f"{PROFILE_EVIDENCE}): send one CMW record per session"
        )
    return record


# What _cbor_record returns for Veritee evidence: unwrap hands the whole collection on.
_VERITEE_COLLECTION: Any = object()
_VERITEE = MediaType.parse(MEDIA_TYPE)


def _json_record(body: bytes) -> Any:
    try:
        record = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedCmw("the CMW is not JSON") from None
    if isinstance(record, dict):
        raise MalformedCmw("CMW collections are not taken: send one CMW record per session")
    return record


def _b64url(value: Any) -> bytes:
    if not isinstance(value, str) or not value.isascii() or "=" in value:
        raise MalformedCmw("the JSON CMW value is not base64url (unpadded)")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        raise MalformedCmw("the JSON CMW value is not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != value:
        raise MalformedCmw("the JSON CMW value is not canonical base64url")
    return raw
