"""The verifier: appraisal of evidence, attestation results (EAR), the REST service, its store.

Public modules (import them directly; this package imports nothing, so ``veritee.verifier.ear``
stays light for relying parties):

* :mod:`~veritee.verifier.appraise` — the I/O-free decision: evidence, nonce, endorsements and
  a compiled policy in, an unsigned EAR out;
* :mod:`~veritee.verifier.ear` — EAR model, ES256 sign / verify, readable description;
* :mod:`~veritee.verifier.endorsements` — trust anchors, revocations, reference values and
  deployment documents as frozen values;
* :mod:`~veritee.verifier.policy` — Rego appraisal policies (the built-in ``default`` and
  ``strict``);
* :mod:`~veritee.verifier.client` — a client for this (or a Veraison) verifier;
* :mod:`~veritee.verifier.service` — the FastAPI application, over :mod:`~veritee.verifier.store`;
* :mod:`~veritee.verifier.errors` — one exception per failed check.

See docs/verifier.md. Never imports ``veritee.tee``: a verifier runs where there is no TEE.
"""
