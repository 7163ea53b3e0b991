//! Veritee's host functions for Wasm modules written in Rust, behind a safe API.
//!
//! This crate mirrors `sdk/veritee.h` (sealing, identity, attestation, secrets) and
//! `sdk/veritee_app.h` (the endpoints of a module in a distributed app, in [`app`]). A module
//! that uses it needs no `unsafe` of its own: every raw call into the secure world is in this
//! crate, in a small block that says why it is sound. Build with `veritee build`:
//!
//! ```text
//! veritee build counter.rs -o counter.wasm          # one file: rustc, wasm32-wasi
//! veritee build examples/rust/counter -o counter.wasm  # a cargo project (path dependency)
//! ```
//!
//! Conventions of the ABI (import module `veritee`): pointers are offsets into the module's
//! own linear memory, checked by the secure world against that memory; a non-negative return
//! is a length, a negative one an error code, returned here as an [`Error`].
#![deny(missing_docs)]

#[cfg(not(target_arch = "wasm32"))]
compile_error!("the veritee crate declares Wasm host imports: build for wasm32-wasi");

pub mod app;
mod sys;

use std::fmt;

/// Bytes a sealed blob adds to its plaintext (the AEAD's nonce and tag and a header).
pub const SEAL_OVERHEAD: usize = 29;
/// Length of a module measurement: a SHA-256 digest.
pub const MEASUREMENT_LEN: usize = 32;
/// Length of a secret service's P-256 public key, uncompressed (`0x04 || X || Y`).
pub const SERVICE_KEY_LEN: usize = 65;
/// Room first offered for evidence (the three tokens are a few KiB); doubled while the
/// secure world answers that it is too small, up to [`MAX_EVIDENCE`].
const EVIDENCE_ROOM: usize = 16 * 1024;
/// Evidence larger than this is not evidence: stop asking rather than grow without end.
const MAX_EVIDENCE: usize = 1024 * 1024;
/// Room for a secret: the secret service's secrets are keys and small files.
pub const MAX_SECRET: usize = 64 * 1024;

/// Why a host function failed: one variant per `VERITEE_ERR_*` code of `veritee.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A pointer/length pair lies outside the module's linear memory (or a size is out of
    /// the range the function accepts, e.g. a nonce of 7 bytes).
    BadArgument,
    /// The output buffer is smaller than the result; nothing was written.
    ShortBuffer,
    /// The blob fails authentication: altered, truncated, or sealed by another module or TEE.
    Unseal,
    /// This secure world does not offer the operation.
    NotSupported,
    /// The secret service refused (appraisal or its policy said no).
    Refused,
    /// The secret's envelope is not from the expected service, or not for this module.
    NotAuthentic,
    /// The normal world could not relay the request (or the output is not declared).
    Relay,
    /// A code this SDK does not know (a newer secure world).
    Unknown(i32),
}

impl Error {
    fn from_code(code: i32) -> Error {
        match code {
            -1 => Error::BadArgument,
            -2 => Error::ShortBuffer,
            -3 => Error::Unseal,
            -4 => Error::NotSupported,
            -5 => Error::Refused,
            -6 => Error::NotAuthentic,
            -7 => Error::Relay,
            other => Error::Unknown(other),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Error::BadArgument => "argument outside the module's memory or out of range",
            Error::ShortBuffer => "output buffer too small",
            Error::Unseal => "sealed data was altered or sealed by another module or TEE",
            Error::NotSupported => "not supported by this secure world",
            Error::Refused => "the secret service refused",
            Error::NotAuthentic => "the secret did not come from the expected service",
            Error::Relay => "the normal world could not relay the request",
            Error::Unknown(code) => return write!(f, "unknown error {code}"),
        };
        f.write_str(text)
    }
}

impl std::error::Error for Error {}

/// A length or an error code, as every host function returns it.
fn check(code: i32) -> Result<usize, Error> {
    if code < 0 {
        Err(Error::from_code(code))
    } else {
        Ok(code as usize)
    }
}

/// A Rust length as the ABI's 32-bit one (on wasm32 a slice never exceeds it; elsewhere the
/// crate does not build).
fn len32(bytes: &[u8]) -> u32 {
    bytes.len() as u32
}

/// Seal `plaintext`: authenticated encryption under a key that only this module (the same
/// binary) on this TEE can derive. Each call takes a fresh nonce. Sealing does not detect
/// rollback: an older blob still unseals.
pub fn seal(plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; plaintext.len() + SEAL_OVERHEAD];
    // SAFETY: both ranges are live Rust slices in this module's memory; the secure world
    // reads at most `plaintext.len()` bytes and writes at most `out.len()`.
    let n = unsafe {
        sys::seal(plaintext.as_ptr(), len32(plaintext), out.as_mut_ptr(), len32(&out))
    };
    out.truncate(check(n)?);
    Ok(out)
}

/// Unseal a blob made by [`seal`] in this module on this TEE; [`Error::Unseal`] for anything
/// else (altered, truncated, another module's or another TEE's).
pub fn unseal(blob: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; blob.len().saturating_sub(SEAL_OVERHEAD)];
    // SAFETY: as in `seal`: live slices, lengths passed with them.
    let n = unsafe { sys::unseal(blob.as_ptr(), len32(blob), out.as_mut_ptr(), len32(&out)) };
    out.truncate(check(n)?);
    Ok(out)
}

/// This module's measurement: the SHA-256 of its Wasm binary as the secure world loaded it.
pub fn measurement() -> [u8; MEASUREMENT_LEN] {
    let mut out = [0u8; MEASUREMENT_LEN];
    // SAFETY: `out` is 32 writable bytes, exactly what the import writes.
    let n = unsafe { sys::measurement(out.as_mut_ptr()) };
    debug_assert_eq!(check(n), Ok(MEASUREMENT_LEN));
    out
}

/// Evidence for this module over a verifier's `nonce` (8 to 64 bytes), with `user_data` (up
/// to 1024 bytes, e.g. a digest of a key this module owns) in the module token. The secure
/// world signs; the module never sees a key.
pub fn evidence(nonce: &[u8], user_data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut room = EVIDENCE_ROOM;
    loop {
        let mut out = vec![0u8; room];
        // SAFETY: live slices with their lengths; the secure world writes at most `room`.
        let n = unsafe {
            sys::evidence(
                nonce.as_ptr(),
                len32(nonce),
                user_data.as_ptr(),
                len32(user_data),
                out.as_mut_ptr(),
                len32(&out),
            )
        };
        match check(n) {
            Ok(len) => {
                out.truncate(len);
                return Ok(out);
            }
            Err(Error::ShortBuffer) if room < MAX_EVIDENCE => room *= 2,
            Err(e) => return Err(e),
        }
    }
}

/// Which key-encapsulation suite the secret service encrypts the secret with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// HPKE with P-256 (the default).
    Classic,
    /// The hybrid post-quantum suite (ML-KEM-768 + X25519).
    PostQuantum,
}

/// Obtain the secret `name` from the secret service this run was wired to (`veritee run
/// --attest-to URL`), in one attestation handshake run by the secure world. `service_key`
/// is the service's P-256 key: embed it in the module (a `const`), so that it is part of
/// what is measured. The normal world only relays bytes and learns nothing.
pub fn secret(
    service_key: &[u8; SERVICE_KEY_LEN],
    name: &str,
    suite: Suite,
) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; MAX_SECRET];
    let flags = match suite {
        Suite::Classic => 0,
        Suite::PostQuantum => 1,
    };
    // SAFETY: live slices and a string, each with its length; at most `out.len()` written.
    let n = unsafe {
        sys::secret(
            service_key.as_ptr(),
            SERVICE_KEY_LEN as u32,
            name.as_ptr(),
            name.len() as u32,
            out.as_mut_ptr(),
            len32(&out),
            flags,
        )
    };
    out.truncate(check(n)?);
    Ok(out)
}

/// AES-256-GCM decryption inside the secure world: `blob` = iv (12) || ciphertext || tag
/// (16), no associated data; [`Error::Unseal`] if it does not authenticate.
pub fn aes_gcm_open(key: &[u8; 32], blob: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; blob.len()];
    // SAFETY: `key` is 32 bytes as the import reads; live slices with their lengths.
    let n = unsafe {
        sys::aes_gcm_open(key.as_ptr(), blob.as_ptr(), len32(blob), out.as_mut_ptr(), len32(&out))
    };
    out.truncate(check(n)?);
    Ok(out)
}
