"""The verifier's secrets on disk: its EAR signing key, its session key, and the operator's
bearer token.

All three are created on first start in the state directory, mode 0600, and are then read by
every worker, so all workers sign with the same key and accept the same token. Creation is
race-free across processes: the file is written under a temporary name and linked into
place; a process that loses the race reads the winner's file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.errors import UsageError

KEY_FILE = "verifier-key.pem"
TOKEN_FILE = "admin-token"
SESSION_KEY_FILE = "session-key"
SESSION_KEY_BYTES = 32
# 32 random bytes: a bearer token nobody guesses, hex so it pastes into a shell.
TOKEN_BYTES = 32
# A token shorter than this is guessable; refuse it rather than run with it.
MIN_TOKEN_CHARS = 16


def signing_key(state: Path) -> ec.EllipticCurvePrivateKey:
    """The verifier's P-256 EAR signing key, created on first use."""
    path = state / KEY_FILE

    def make() -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    data = _create_once(path, make)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise UsageError(f"{path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UsageError(f"{path} must hold a P-256 key (results are signed ES256)")
    return key


def session_key(state: Path) -> bytes:
    """The key that authenticates session ids (see :mod:`veritee.verifier.sessions`)."""
    path = state / SESSION_KEY_FILE
    key = _create_once(path, lambda: secrets.token_bytes(SESSION_KEY_BYTES))
    if len(key) != SESSION_KEY_BYTES:
        raise UsageError(f"{path} must hold {SESSION_KEY_BYTES} bytes (delete it to make anew)")
    return key


def admin_token(state: Path, token_file: Path | None = None) -> str:
    """The provisioning bearer token: from ``token_file`` if given, else created in ``state``."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    else:
        token = (
            _create_once(state / TOKEN_FILE, lambda: secrets.token_hex(TOKEN_BYTES).encode())
            .decode()
            .strip()
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"the provisioning token must be at least {MIN_TOKEN_CHARS} characters")
    return token


def token_digest(token: str) -> bytes:
    """What a worker keeps in memory to check tokens against (compared in constant time)."""
    return hashlib.sha256(token.encode()).digest()


def token_matches(presented: str, digest: bytes) -> bool:
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), digest)


def _create_once(path: Path, make: Callable[[], bytes]) -> bytes:
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = make()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()
