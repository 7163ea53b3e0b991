"""The secure world's TEE backends (the emulated one and the TPM 2.0 one, tee/backends/tpm.py)."""
