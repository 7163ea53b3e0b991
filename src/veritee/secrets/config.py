"""The service configuration (YAML): read once at start, validated, then trusted.

Every error names the file and the field (``secrets.yaml: secrets[1] (data-key).value_hex:
not hex``); nothing half-valid starts. Relative paths are relative to the configuration file.
Secret values are held in :class:`Secret` with ``repr=False`` so they never reach a log or
a message.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from veritee.errors import EvidenceError
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors
from veritee.evidence.certs import DEFAULT_CEILING
from veritee.evidence.claims import LIFECYCLES
from veritee.evidence.provisioning import MAX_NAME, MAX_SECRET_BYTES
from veritee.secrets.errors import ConfigError
from veritee.secrets.policy import DEFAULT_POLICY_FILE, ReleasePolicy, default_policy
from veritee.secrets.release import Trust

DEFAULT_NONCE_TTL = 60.0
# The protocol states expiry in whole seconds; a shorter life could not be stated or used.
MIN_NONCE_TTL = 1.0
# A nonce that lives longer than this no longer shows the evidence is fresh.
MAX_NONCE_TTL = 3600.0
# A configuration or policy file is an operator's text, not a data set.
MAX_CONFIG_BYTES = 1024 * 1024
# Secret names go into HPKE's info, logs and error messages: keep them plain.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")

# One client (source address) asking for challenges in a loop must not use up the service's
# global cap (store.MAX_OUTSTANDING_NONCES) and lock every other client out; a node agent
# relaying for its modules needs a few at a time, each used within seconds.
DEFAULT_CHALLENGES_PER_CLIENT = 1000
MAX_CHALLENGES_PER_CLIENT = 100_000

# "serve" holds the serve command's options (host, port, tls-*), read by the CLI
# (veritee/cli/_config.py), not by the service.
_TOP = frozenset({"trust", "nonce_ttl", "secrets", "challenges_per_client", "serve"})
_TRUST = frozenset({"ca", "reference_values", "verifier"})
_CA_ENTRY = frozenset({"file", "max_lifecycle"})
EAR_STATUSES = ("affirming", "warning")  # what min_ear_status may ask for
_SECRET = frozenset({"name", "value_hex", "value_file", "allow", "policy"})
# The default policy reads these `allow` keys; a custom policy may read others.
_DEFAULT_ALLOW = frozenset(
    {
        "measurements",
        "names",
        "lifecycles",
        "vtees",
        "min_ear_status",
        "require_rollback_protection",
    }
)


@dataclass(frozen=True)
class Secret:
    name: str
    value: bytes = field(repr=False)
    policy: ReleasePolicy = field(repr=False, compare=False)
    allow: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    path: Path
    trust: Trust = field(repr=False)
    nonce_ttl: float
    secrets: Mapping[str, Secret]
    verifier: str | None = None  # a verification service whose results (EAR) the policy sees
    challenges_per_client: int = DEFAULT_CHALLENGES_PER_CLIENT  # outstanding, per address


def load(path: Path) -> Config:
    """Read and validate the configuration at ``path``; raise :class:`ConfigError`."""
    path = path.resolve()
    text = _read(path, path.name, "configuration").decode("utf-8", "replace")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"{path.name}: not valid YAML{at}") from None
    return parse(value, path)


def parse(value: Any, path: Path) -> Config:
    """Validate an already-loaded configuration; ``path`` anchors relative paths."""
    f = _Fields(path)
    top = f.mapping(value, "", _TOP)
    trust = _trust(f, f.mapping(top.get("trust"), "trust", _TRUST | _TRUST_TPM, required=True))
    ttl = top.get("nonce_ttl", DEFAULT_NONCE_TTL)
    if (
        not isinstance(ttl, int | float)
        or isinstance(ttl, bool)
        or not math.isfinite(ttl)
        or not MIN_NONCE_TTL <= ttl <= MAX_NONCE_TTL
    ):
        raise f.error(
            "nonce_ttl", f"must be a number of seconds from {MIN_NONCE_TTL:g} to {MAX_NONCE_TTL:g}"
        )
    per_client = top.get("challenges_per_client", DEFAULT_CHALLENGES_PER_CLIENT)
    if (
        not isinstance(per_client, int)
        or isinstance(per_client, bool)
        or not 1 <= per_client <= MAX_CHALLENGES_PER_CLIENT
    ):
        raise f.error(
            "challenges_per_client", f"must be a whole number from 1 to {MAX_CHALLENGES_PER_CLIENT}"
        )
    entries = top.get("secrets")
    if not isinstance(entries, list) or not entries:
        raise f.error("secrets", "must be a non-empty list of secrets")
    secrets: dict[str, Secret] = {}
    for i, entry in enumerate(entries):
        secret = _secret(f, entry, i)
        if secret.name in secrets:
            raise f.error(f"secrets[{i}].name", f"'{secret.name}' is defined twice")
        secrets[secret.name] = secret
    verifier = top.get("trust", {}).get("verifier")
    if verifier is not None and (
        not isinstance(verifier, str) or not verifier.startswith(("http://", "https://"))
    ):
        raise f.error("trust.verifier", "must be the verifier's http(s) URL")
    for name, secret in secrets.items():
        if "min_ear_status" in secret.allow and verifier is None:
            raise f.error(
                f"secrets ({name}).allow.min_ear_status",
                "needs trust.verifier: only a verifier's result has a status",
            )
    return Config(path, trust, float(ttl), secrets, verifier, per_client)


class _Fields:
    """Field access that turns every problem into a ConfigError naming the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where(name or 'top level')}: {problem}")

    def mapping(
        self, value: Any, name: str, known: frozenset[str], *, required: bool = False
    ) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.error(name, "must be a mapping")
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise self.error(name, f"unknown field(s) {unknown}; expected some of {sorted(known)}")
        return value

    def strings(self, value: Any, name: str) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be a string or a list of strings")
        return value

    def read(self, value: str, name: str, what: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
        """The file field ``name`` names (relative to the configuration file)."""
        p = Path(value).expanduser()
        return _read(p if p.is_absolute() else self.path.parent / p, self.where(name), what, limit)

    def where(self, name: str) -> str:
        return f"{self.path.name}: {name}"


def _trust(f: _Fields, value: dict[str, Any]) -> Trust:
    cas = value.get("ca", [])
    if isinstance(cas, str | dict):
        cas = [cas]
    if not isinstance(cas, list) or not cas:
        raise f.error("trust.ca", "name at least one manufacturer CA certificate (PEM)")
    anchors = TrustAnchors(())
    for i, entry in enumerate(cas):
        name = f"trust.ca[{i}]"
        ca, ceiling = _ca_entry(f, entry, name)
        pem = f.read(ca, name, "CA certificate")
        try:
            anchors = anchors.merge(TrustAnchors.from_pem(pem, max_lifecycle=ceiling))
        except EvidenceError as exc:
            raise f.error(name, f"{ca}: {exc}") from None
    anchors = _tpm_trust(f, value, anchors)
    files = f.strings(value.get("reference_values", []), "trust.reference_values")
    if not files:
        raise f.error(
            "trust.reference_values",
            "name at least one reference-values file: boot logs are checked against it",
        )
    refs = []
    for i, rv in enumerate(files):
        name = f"trust.reference_values[{i}]"
        raw = f.read(rv, name, "reference values")
        try:
            refs.append(ReferenceValues.from_json(json.loads(raw)))
        except ValueError:
            raise f.error(name, f"{rv} is not JSON") from None
        except EvidenceError as exc:
            raise f.error(name, f"{rv}: {exc}") from None
    return Trust.from_reference_values(anchors, refs)


# What TPM-backed devices are trusted by (trust.tpm_ca, trust.tpm_registrations).
_TRUST_TPM = frozenset({"tpm_ca", "tpm_registrations"})


def _tpm_trust(f: _Fields, value: dict[str, Any], anchors: TrustAnchors) -> TrustAnchors:
    """``trust.tpm_ca`` (TPM manufacturer CAs, PEM files) and ``trust.tpm_registrations`` (the
    registrar's file, ``veritee evidence tpm-register``): what TPM-backed devices are trusted
    by. Neither: no TPM-backed device is."""
    cas_files = f.strings(value.get("tpm_ca", []), "trust.tpm_ca")
    registrations = value.get("tpm_registrations")
    if not cas_files and registrations is None:
        return anchors
    if not cas_files or not isinstance(registrations, str):
        raise f.error(
            "trust.tpm_ca" if not cas_files else "trust.tpm_registrations",
            "TPM-backed devices need both a TPM manufacturer CA and the registrations file",
        )
    from cryptography import x509

    from veritee.evidence import tpm

    cas: list[x509.Certificate] = []
    for i, path in enumerate(cas_files):
        name = f"trust.tpm_ca[{i}]"
        try:
            cas.extend(x509.load_pem_x509_certificates(f.read(path, name, "TPM CA certificate")))
        except ValueError:
            raise f.error(name, f"{path} holds no PEM certificate") from None
    raw = f.read(registrations, "trust.tpm_registrations", "TPM registrations")
    try:
        regs = tpm.registrations_from_json(json.loads(raw))
    except ValueError:
        raise f.error("trust.tpm_registrations", f"{registrations} is not JSON") from None
    except EvidenceError as exc:
        raise f.error("trust.tpm_registrations", f"{registrations}: {exc}") from None
    return dataclasses.replace(anchors, tpm_cas=tuple(cas), tpm_registrations=regs)


def _ca_entry(f: _Fields, entry: Any, name: str) -> tuple[str, str]:
    """A ``trust.ca`` item: a PEM file's path (its CA endorses at most emulated: whoever holds
    the CA's key can re-mint the file with any mark), or ``{file: PATH, max_lifecycle: LC}``,
    the operator's word that this CA may endorse up to LC."""
    if isinstance(entry, str):
        return entry, DEFAULT_CEILING
    item = f.mapping(entry, name, _CA_ENTRY, required=True)
    path = item.get("file")
    if not isinstance(path, str):
        raise f.error(f"{name}.file", "must be the path of a PEM certificate")
    ceiling = item.get("max_lifecycle", DEFAULT_CEILING)
    if ceiling not in LIFECYCLES:
        raise f.error(f"{name}.max_lifecycle", f"must be one of {list(LIFECYCLES)}")
    return path, str(ceiling)


def _secret(f: _Fields, value: Any, i: int) -> Secret:
    where = f"secrets[{i}]"
    entry = f.mapping(value, where, _SECRET, required=True)
    name = entry.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME:
        raise f.error(
            f"{where}.name",
            f"must be 1 to {MAX_NAME} letters, digits or . _ : / @ + - (starting with a "
            "letter or digit)",
        )
    where = f"{where} ({name})"
    value_bytes = _value(f, entry, where)
    policy_file = entry.get("policy")
    if policy_file is None:
        source, rego = DEFAULT_POLICY_FILE, default_policy()
    elif isinstance(policy_file, str):
        source = policy_file
        rego = f.read(policy_file, f"{where}.policy", "policy").decode("utf-8", "replace")
    else:
        raise f.error(f"{where}.policy", "must be the path of a .rego file")
    allow = _allow(f, entry.get("allow"), f"{where}.allow", custom=policy_file is not None)
    try:
        policy = ReleasePolicy(source, rego, allow)
    except ConfigError as exc:
        raise f.error(f"{where}.policy", str(exc)) from None
    return Secret(name, value_bytes, policy, allow)


def _value(f: _Fields, entry: dict[str, Any], where: str) -> bytes:
    if ("value_hex" in entry) == ("value_file" in entry):
        raise f.error(where, "give exactly one of value_hex and value_file")
    if "value_hex" in entry:
        text = entry["value_hex"]
        if not isinstance(text, str):
            # YAML reads an unquoted 00112233 as a number: say how to fix it.
            raise f.error(f"{where}.value_hex", "must be a string of hex; quote it in YAML")
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise f.error(f"{where}.value_hex", "is not hex") from None
        field_name = "value_hex"
    else:
        if not isinstance(entry["value_file"], str):
            raise f.error(f"{where}.value_file", "must be a path")
        value = f.read(entry["value_file"], f"{where}.value_file", "secret", MAX_SECRET_BYTES)
        field_name = "value_file"
    if not value:
        raise f.error(f"{where}.{field_name}", "the secret is empty")
    if len(value) > MAX_SECRET_BYTES:
        raise f.error(
            f"{where}.{field_name}",
            f"the secret is {len(value)} bytes, over the {MAX_SECRET_BYTES}-byte limit",
        )
    return value


def _allow(f: _Fields, value: Any, where: str, *, custom: bool) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise f.error(where, "must be a mapping")
    if not custom:
        f.mapping(value, where, _DEFAULT_ALLOW)
        if not value.get("measurements") and not value.get("names"):
            raise f.error(
                where,
                "the default policy releases only to listed modules: give measurements or names",
            )
    out = dict(value)
    for key in ("measurements", "names", "lifecycles", "vtees"):
        if key in value:
            out[key] = f.strings(value[key], f"{where}.{key}")
    for i, m in enumerate(out.get("measurements", [])):
        if not re.fullmatch(r"[0-9a-fA-F]{64}", m):
            raise f.error(f"{where}.measurements[{i}]", "must be a SHA-256 digest in hex")
    if "measurements" in out:
        out["measurements"] = [m.lower() for m in out["measurements"]]
    status = out.get("min_ear_status")
    if status is not None and status not in EAR_STATUSES:
        raise f.error(f"{where}.min_ear_status", f"must be one of {list(EAR_STATUSES)}")
    if not isinstance(out.get("require_rollback_protection", False), bool):
        raise f.error(f"{where}.require_rollback_protection", "must be true or false")
    for i, lc in enumerate(out.get("lifecycles", [])):
        if lc not in LIFECYCLES:
            raise f.error(f"{where}.lifecycles[{i}]", f"{lc!r} is not one of {list(LIFECYCLES)}")
    try:
        # The policy sees this as JSON: refuse YAML-only values (dates, sets) here, not later.
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError):
        raise f.error(where, "must hold only JSON values (strings, numbers, lists, maps)") from None
    return out


def _read(path: Path, name: str, what: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(f"{name}: {what} file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: {path} is a directory, not a {what} file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {what} file {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{name}: {what} file {path} is over the {limit}-byte limit")
    return data
