"""Veritee: trusted WebAssembly."""

__version__ = "0.1.0"
