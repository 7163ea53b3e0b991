"""A normal Python client that talks to the directory module only after attestation.

It trusts the manufacturer CA and the reference values of the device it is given (a real
client would be given them by the app's owner), plus the measurement of exactly one module:
the directory.wasm it was built with. A server running anything else, on any device, is
refused before a byte of the request leaves this process.

    python examples/ratls/client.py 127.0.0.1:8443 --module directory.wasm alice
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from veritee import ratls
from veritee.errors import Error
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors
from veritee.home import Home
from veritee.wasm.runtime import measure, to_binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="HOST:PORT of `veritee ratls serve`")
    parser.add_argument("name", help="whom to look up")
    parser.add_argument("--module", type=Path, required=True, help="the expected directory.wasm")
    parser.add_argument("--mode", choices=ratls.MODES, default="challenge")
    parser.add_argument("--home", type=Path, help="device state (for its CA and references)")
    args = parser.parse_args()

    home = Home.resolve(args.home)
    anchors = TrustAnchors.from_pem((home.manufacturer / "ca.pem").read_bytes())
    refs = ReferenceValues.from_json(
        json.loads((home.manufacturer / "reference-values.json").read_text())
    )
    expected = measure(to_binary(args.module.read_bytes()))
    refs = refs.merge(ReferenceValues({}, {expected: "directory"}))
    host, _, port = args.address.rpartition(":")

    try:
        with ratls.connect(
            host, int(port), ratls.LocalAppraiser(anchors, refs), mode=args.mode
        ) as conn:
            assert conn.peer is not None
            print(
                f"attested: {conn.peer.module_name} {conn.peer.measurement.hex()[:16]}… "
                f"on {conn.peer.device.hex()[:16]}… ({conn.peer.status})",
                file=sys.stderr,
            )
            answer = conn.request(args.name.encode())
    except Error as err:  # every refusal names the failed check
        print(f"refused: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(answer.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
