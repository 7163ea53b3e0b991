"""The RA-TLS protocol core, without I/O: the wire format, certificates that carry
evidence, their appraisal, and the protocol engine. The secure world's TLS TA (``tee``) and
the relying parties' helpers (``veritee.ratls``) both run it; it sits below both, so the
secure world imports nothing of the normal world's tooling.
"""
