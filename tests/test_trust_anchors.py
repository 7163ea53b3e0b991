"""Trust anchors: the provisioner's lifecycle ceiling, CA identity by key, the CA profile.

Siblings of tests/test_redteam_chain.py's holes, I/O-free (or one SQLite file): the attacker
is the owner of an emulated device, who holds its CA's key and re-mints the CA file with
another mark or serial; or an operator's mistake an attacker hands them (a certificate that is
not a CA, a revocation of a CA nobody trusts).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, text

from veritee.evidence import certs
from veritee.evidence.appraisal import TrustAnchors, local_status, verify
from veritee.evidence.errors import LifecycleNotEndorsed, UntrustedDevice
from veritee.secrets import decide, load_config
from veritee.secrets.errors import ConfigError, VerifierContraindicated
from veritee.secrets.release import judge
from veritee.verifier import endorsements
from veritee.verifier.endorsements import Endorsements, Revocation
from veritee.verifier.errors import ProvisioningError
from veritee.verifier.store import Store

from .test_redteam_chain import _ca, _evidence_for, _leaf, _pem, _self_signed_device, _twin_ca
from .test_secrets_service import MEASUREMENT, NONCE, SyntheticDevice, default

NOW = dt.datetime.now(dt.UTC)


def _secured_device() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, x509.Certificate]:
    ca_key, ca = _ca("secured")
    dak = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_key, ca, dak.public_key())
    return dak, ca, cert


# -- the ceiling ------------------------------------------------------------------------------


def test_a_ca_file_endorses_at_most_emulated_unless_its_reader_says_otherwise() -> None:
    """Refused (LifecycleNotEndorsed): a CA read from a PEM file is capped at emulated, whatever
    its mark; the caller that vouches for the file's origin lifts it explicitly."""
    dak, ca, cert = _secured_device()
    nonce = bytes(32)
    evidence = _evidence_for(dak, [cert], "secured", nonce)
    with pytest.raises(LifecycleNotEndorsed, match="at most 'emulated'"):
        verify(evidence, TrustAnchors.from_pem(_pem(ca)), nonce=nonce)
    verified = verify(
        evidence, TrustAnchors.from_pem(_pem(ca), max_lifecycle="secured"), nonce=nonce
    )
    assert verified.lifecycle == "secured" and local_status(verified) == "affirming"
    honest = verify(
        _evidence_for(dak, [cert], "emulated", nonce), TrustAnchors.from_pem(_pem(ca)), nonce=nonce
    )
    assert local_status(honest) == "warning"


def test_merged_anchors_keep_the_lower_ceiling_of_a_shared_key() -> None:
    """Refused: two sources trusting one CA key (a node HOME's file, emulated; an operator's
    secured word) merge to the lower ceiling, in either order."""
    _, ca, _ = _secured_device()
    low = TrustAnchors.from_pem(_pem(ca))
    high = TrustAnchors.from_pem(_pem(ca), max_lifecycle="secured")
    assert low.merge(high).ceilings == high.merge(low).ceilings == {certs.key_id(ca): "emulated"}


def test_the_verifiers_anchors_are_capped_by_the_recorded_ceiling() -> None:
    """Refused: an anchor provisioned without a ceiling (the default) or the lowest ceiling
    among anchors of one key caps a secured-marked twin; the operator's secured word lifts it."""
    ca_key, ca = _ca("emulated")
    twin = _twin_ca(ca_key, ca, "secured")
    default_anchor = endorsements.ca_anchors_from_pem(_pem(twin).decode())
    assert default_anchor[0].max_lifecycle == "emulated"
    e = Endorsements.build(cas=default_anchor)
    assert e.anchors.ceilings == {certs.key_id(twin): "emulated"}
    secured = endorsements.ca_anchors_from_pem(_pem(twin).decode(), max_lifecycle="secured")
    both = Endorsements.build(cas=[*secured, *endorsements.ca_anchors_from_pem(_pem(ca).decode())])
    assert both.anchors.ceilings == {certs.key_id(twin): "emulated"}
    assert Endorsements.build(cas=secured).anchors.ceilings == {certs.key_id(twin): "secured"}


def test_provisioning_a_ceiling_is_checked() -> None:
    _, ca, _ = _secured_device()
    pem = _pem(ca).decode()
    (anchor,) = endorsements.trust_anchors({"ca": pem, "max-lifecycle": "secured"})
    assert anchor.max_lifecycle == "secured"
    for bad in ("production", ["secured"], 3):
        with pytest.raises(ProvisioningError, match="max-lifecycle"):
            endorsements.trust_anchors({"ca": pem, "max-lifecycle": bad})
    with pytest.raises(ProvisioningError, match="unknown field"):
        endorsements.trust_anchors({"ca": pem, "lifecycle": "secured"})


# -- the CA profile ---------------------------------------------------------------------------


def test_an_anchor_off_the_profile_is_refused_everywhere() -> None:
    """Refused: a self-signed CA:false certificate as a trust anchor, at provisioning
    (ProvisioningError), from a PEM file and in validate_device_chain (UntrustedDevice)."""
    dak = ec.generate_private_key(ec.SECP256R1())
    leaf = _self_signed_device(dak)
    with pytest.raises(ProvisioningError, match="not a manufacturer CA"):
        endorsements.ca_anchors_from_pem(_pem(leaf).decode())
    with pytest.raises(UntrustedDevice, match="not a manufacturer CA"):
        TrustAnchors.from_pem(_pem(leaf))
    with pytest.raises(UntrustedDevice, match="not a manufacturer CA"):
        certs.validate_device_chain([leaf], (leaf,), NOW)
    # A CA without pathlen 0 or keyCertSign is off the profile too.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "wide CA")])
    wide = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    assert certs.ca_profile_problem(wide) is not None


# -- revocation by key ------------------------------------------------------------------------


def test_a_ca_revocation_names_a_trusted_key() -> None:
    """Refused (ProvisioningError): revoking a CA no anchor has the key of; a twin's PEM or the
    anchor's id resolve to the trusted key, so every certificate of it is revoked."""
    ca_key, ca = _ca("emulated")
    twin = _twin_ca(ca_key, ca, "emulated")
    anchors = endorsements.ca_anchors_from_pem(_pem(ca).decode())
    kid = certs.key_id(ca)
    for named in (_pem(twin).decode(), anchors[0].id, kid.hex()):
        resolved = endorsements.resolve_revocation(endorsements.revocation({"ca": named}), anchors)
        assert resolved == Revocation("ca", kid)
    _, stranger = _ca("emulated")
    with pytest.raises(ProvisioningError, match="no trust anchor has the CA key"):
        endorsements.resolve_revocation(
            endorsements.revocation({"ca": _pem(stranger).decode()}), anchors
        )


def test_a_revoked_key_revokes_every_certificate_of_it() -> None:
    """Refused (UntrustedDevice "revoked"): a device certificate issued under a twin of the
    revoked CA's key, and one under the CA itself; legacy revocations by DER digest still hold."""
    ca_key, ca = _ca("emulated")
    dak = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_key, ca, dak.public_key())
    nonce = bytes(32)
    evidence = _evidence_for(dak, [cert], "emulated", nonce)
    e = Endorsements.build(
        cas=endorsements.ca_anchors_from_pem(_pem(ca).decode()),
        revocations=[Revocation("ca", endorsements.ca_id(_pem(ca).decode()))],  # a legacy row
    )
    assert certs.key_id(ca) in e.revoked_cas
    revoked = TrustAnchors(e.cas, revoked_cas=e.revoked_cas, ceilings=e.ceilings)
    with pytest.raises(UntrustedDevice, match="revoked"):
        verify(evidence, revoked, nonce=nonce)


def test_the_store_records_ceilings_refuses_stranger_revocations_and_migrates(
    tmp_path: Path,
) -> None:
    """The verifier's store: a CA's ceiling survives a restart; a database from before ceilings
    gains the column, its anchors read as emulated; a CA revocation of an untrusted key is
    refused and nothing is written."""
    url = f"sqlite:///{tmp_path / 'v.sqlite3'}"
    store = Store(url)
    store.create()
    _, ca = _ca("secured")
    store.add_anchors(endorsements.ca_anchors_from_pem(_pem(ca).decode(), max_lifecycle="secured"))
    assert store.snapshot().cas[0].max_lifecycle == "secured"
    listed = store.listing()["trust-anchors"][0]
    assert listed["max-lifecycle"] == "secured" and listed["key-id"] == certs.key_id(ca).hex()
    _, stranger = _ca("secured")
    generation = store.generation()
    with pytest.raises(ProvisioningError, match="no trust anchor"):
        store.add_revocation(endorsements.revocation({"ca": _pem(stranger).decode()}))
    assert store.generation() == generation and store.snapshot().revocations == ()
    rid = store.add_revocation(endorsements.revocation({"ca": _pem(ca).decode()}))
    assert rid == f"ca:{certs.key_id(ca).hex()}"
    # An older database: no ceiling column.
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("ALTER TABLE trust_anchors DROP COLUMN max_lifecycle"))
    engine.dispose()
    again = Store(url)
    again.create()
    assert again.snapshot().cas[0].max_lifecycle == "emulated"


# -- the secret service -----------------------------------------------------------------------


def test_a_contraindicated_result_is_never_released() -> None:
    """Refused (VerifierContraindicated): the trusted verifier's contraindicated (or none)
    result releases nothing, even for a secret whose policy sets no min_ear_status."""
    dev = SyntheticDevice("secured")
    evidence = dev.evidence(NONCE, MEASUREMENT)
    policy = default({"measurements": [MEASUREMENT.hex()]})
    trust = dev.trust()
    decide(evidence, nonce=NONCE, secret="k", suite="x25519", policy=policy, trust=trust)
    from veritee.secrets.release import appraise

    verified = appraise(evidence, nonce=NONCE, trust=trust)
    for status in ("contraindicated", "none"):
        with pytest.raises(VerifierContraindicated, match=status):
            judge(
                verified,
                secret="k",
                suite="x25519",
                policy=policy,
                trust=trust,
                ear_status=status,
            )
    judge(verified, secret="k", suite="x25519", policy=policy, trust=trust, ear_status="warning")


def test_the_secret_service_config_records_a_ceiling_per_ca(tmp_path: Path) -> None:
    _, ca, _ = _secured_device()
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    (tmp_path / "refs.json").write_text('{"boot": []}')

    def config(entry: object) -> Path:
        path = tmp_path / "secrets.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "trust": {"ca": [entry], "reference_values": ["refs.json"]},
                    "secrets": [{"name": "k", "value_hex": "01", "allow": {"names": ["m"]}}],
                }
            )
        )
        return path

    kid = certs.key_id(ca)
    assert load_config(config("ca.pem")).trust.anchors.ceilings == {kid: "emulated"}
    secured = load_config(config({"file": "ca.pem", "max_lifecycle": "secured"}))
    assert secured.trust.anchors.ceilings == {kid: "secured"}
    with pytest.raises(ConfigError, match="max_lifecycle"):
        load_config(config({"file": "ca.pem", "max_lifecycle": "production"}))
    leaf = _self_signed_device(ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "ca.pem").write_bytes(_pem(leaf))
    with pytest.raises(ConfigError, match="not a manufacturer CA"):
        load_config(config("ca.pem"))


# -- the operator's CLI -----------------------------------------------------------------------


def test_the_cli_records_and_shows_the_ceiling(tmp_path: Path) -> None:
    """``trust-ca`` records emulated unless ``--max-lifecycle`` says otherwise, ``show`` prints
    each CA's ceiling, ``trust-ca`` refuses a certificate off the CA profile, and ``revoke
    --ca`` refuses a CA no anchor has the key of (one clear line, no traceback)."""
    from .test_verifier_service import start_verifier

    home = tmp_path / "home"
    home.mkdir()
    server = start_verifier(home, tmp_path / "verifier")
    try:
        _, ca = _ca("secured")
        _, other = _ca("secured")
        (tmp_path / "ca.pem").write_bytes(_pem(ca))
        (tmp_path / "other.pem").write_bytes(_pem(other))
        (tmp_path / "leaf.pem").write_bytes(
            _pem(_self_signed_device(ec.generate_private_key(ec.SECP256R1())))
        )
        assert "endorses at most emulated" in server.provision(
            home, "trust-ca", tmp_path / "ca.pem"
        )
        shown = server.provision(home, "show")
        assert f"endorses at most emulated  key {certs.key_id(ca).hex()}" in shown
        out = server.provision(
            home, "trust-ca", "--max-lifecycle", "secured", tmp_path / "other.pem"
        )
        assert "endorses at most secured" in out
        assert "endorses at most secured" in server.provision(home, "show")
        base = ("verifier", "provision", "--verifier", server.url, "--token", server.token)
        for args, why in (
            (("trust-ca", tmp_path / "leaf.pem"), "not a manufacturer CA"),
            (("revoke", "--ca", "ab" * 32), "no trust anchor has the CA key"),
        ):
            proc = server.cli(home, *base, *args)
            err = proc.stderr.decode()
            assert proc.returncode != 0 and why in err and "Traceback" not in err, err
        assert "revoked ca:" in server.provision(home, "revoke", "--ca", tmp_path / "ca.pem")
    finally:
        server.stop()
