"""The normal world's relay for the secure world (the part OP-TEE's tee-supplicant plays).

During a run, the secure world may ask the normal world to carry an HTTP request (for
WASI-RA: to the secret service). The relay sends it to the one service the user named and
returns the answer. It is untrusted and needs no trust: what it carries is a challenge,
evidence and HPKE ciphertext signed by the service. Uses urllib so ``veritee run`` stays
light.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from veritee.errors import UsageError
from veritee.servicetls import client_verify

MAX_ANSWER_BYTES = 1024 * 1024  # an envelope is a few KiB; anything bigger is refused
TIMEOUT = 30.0  # seconds per relayed request


class HttpRelay:
    """Carries the secure world's requests to ``base_url`` (and nowhere else)."""

    def __init__(self, base_url: str) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"--attest-to {base_url!r}: expected http(s)://HOST[:PORT]")
        self.base = base_url.rstrip("/")
        # https: the service's certificate is verified against --ca / $VERITEE_CA (else the
        # system's CAs), as every other client of a Veritee service does.
        verify = client_verify() if parsed.scheme == "https" else None
        self._tls = verify if isinstance(verify, ssl.SSLContext) else None

    def __call__(self, rpc: dict[str, Any]) -> dict[str, Any]:
        path = rpc.get("path")
        if rpc.get("op") != "http" or not isinstance(path, str) or not path.startswith("/"):
            return {"error": "unsupported relay request"}
        body = rpc.get("body", b"")
        request = urllib.request.Request(
            self.base + path,
            data=body if isinstance(body, bytes) else b"",
            method=str(rpc.get("method", "POST")),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self._tls) as resp:
                return {"status": resp.status, "body": resp.read(MAX_ANSWER_BYTES)}
        except urllib.error.HTTPError as exc:
            return {"status": exc.code, "body": exc.read(MAX_ANSWER_BYTES)}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return {"error": f"{self.base}: {exc}"}
