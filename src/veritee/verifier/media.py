"""Evidence media types the verifier accepts, and which appraisal scheme each one selects.

The strings are Veraison's, so a Veraison client (which picks from the session's ``accept``
list) works unchanged. Veraison itself lists the ``profile`` parameter both quoted and bare;
parameters are compared after parsing, so either spelling matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from veritee.evidence.claims import MEDIA_TYPE as VERITEE_MEDIA_TYPE
from veritee.evidence.claims import OLD_MEDIA_TYPE as VERITEE_OLD_MEDIA_TYPE
from veritee.verifier.errors import UnsupportedMediaType

Scheme = Literal["veritee", "psa", "cca"]
SCHEMES: tuple[Scheme, ...] = ("veritee", "psa", "cca")

# A Content-Type header longer than this is not one we list: refuse before parsing it.
MAX_MEDIA_TYPE_CHARS = 256

PSA_TOKEN = "application/psa-attestation-token"
PSA_2_0_0 = 'application/eat-cwt; profile="http://arm.com/psa/2.0.0"'
PSA_RFC9783 = 'application/eat+cwt; eat_profile="tag:psacertified.org,2023:psa#tfm"'
PSA_LEGACY = 'application/eat+cwt; eat_profile="tag:psacertified.org,2019:psa#legacy"'
CCA_TOKEN = 'application/eat-collection; profile="http://arm.com/CCA-SSD/1.0.0"'
CCA_PLATFORM_1 = 'application/eat-collection; profile="tag:arm.com,2023:cca_platform#1.0.0"'

# In the order the session's ``accept`` list offers them: our own evidence first.
ACCEPTED: tuple[tuple[str, Scheme], ...] = (
    (VERITEE_MEDIA_TYPE, "veritee"),  # a CMW collection: is_cmw routes it (cmw.unwrap)
    (VERITEE_OLD_MEDIA_TYPE, "veritee"),  # the media type before it, for one release
    (PSA_TOKEN, "psa"),
    (PSA_2_0_0, "psa"),
    (PSA_RFC9783, "psa"),
    (PSA_LEGACY, "psa"),
    (CCA_TOKEN, "cca"),
    (CCA_PLATFORM_1, "cca"),
)
# Conceptual Message Wrappers around any of the above (unwrapped by veritee.verifier.cmw).
CMW_CBOR_TYPES = ("application/cmw+cbor", "application/vnd.veraison.cmw+cbor")
CMW_JSON_TYPES = ("application/cmw+json", "application/vnd.veraison.cmw+json")
ACCEPT_LIST: tuple[str, ...] = (
    *(mt for mt, _ in ACCEPTED),
    *CMW_CBOR_TYPES,
    *CMW_JSON_TYPES,
)


@dataclass(frozen=True)
class MediaType:
    """A parsed media type: lower-case ``type/subtype`` and its parameters (values unquoted)."""

    essence: str
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MediaType:
        if len(text) > MAX_MEDIA_TYPE_CHARS:
            raise UnsupportedMediaType("the Content-Type header is too long to be a media type")
        head, *rest = text.split(";")
        essence = head.strip().lower()
        if essence.count("/") != 1:
            raise UnsupportedMediaType(f"{_shown(text)} is not a media type")
        params = []
        for part in rest:
            name, sep, value = part.partition("=")
            if not sep:
                if part.strip():
                    raise UnsupportedMediaType(f"{_shown(text)} has a malformed parameter")
                continue
            params.append((name.strip().lower(), value.strip().strip('"')))
        return cls(essence, tuple(sorted(params)))


_BY_TYPE: dict[MediaType, Scheme] = {MediaType.parse(mt): scheme for mt, scheme in ACCEPTED}


def scheme_of(content_type: str | None) -> Scheme:
    """The scheme that appraises ``content_type``; raise :class:`UnsupportedMediaType`."""
    if not content_type:
        raise UnsupportedMediaType("the evidence has no Content-Type; send one of the accepted")
    parsed = MediaType.parse(content_type)
    # charset and the like do not change what the bytes are.
    relevant = MediaType(parsed.essence, tuple(p for p in parsed.params if p[0] != "charset"))
    scheme = _BY_TYPE.get(relevant)
    if scheme is None:
        raise UnsupportedMediaType(
            f"evidence of type {_shown(content_type)} is not appraised here; "
            f"accepted: {', '.join(ACCEPT_LIST)}"
        )
    return scheme


def _shown(text: str) -> str:
    # Client-chosen text: never echo much of it.
    return repr(text[:80])
