//! counter: a counter that survives restarts, kept in sealed storage (the Rust twin of
//! examples/counter/counter.c).
//!
//! The secure world preopens this module's private storage at /data. The count is stored
//! there sealed, so the untrusted host that keeps the file can neither read nor change it: a
//! tampered file, or one sealed by another module, fails to unseal and the program stops
//! instead of starting over. Sealing does not stop the host from handing back an older copy
//! (rollback).
//!
//!     veritee build examples/rust/counter -o counter.wasm
#![deny(unsafe_code)]

use std::fs;
use std::io::{self, Write};
use std::process::ExitCode;

const STATE_PATH: &str = "/data/counter.sealed";
const STATE_TMP_PATH: &str = "/data/counter.sealed.tmp";

/// Read and unseal the stored count. A missing file is the only case that starts from zero.
fn load_count() -> Result<u64, String> {
    let sealed = match fs::read(STATE_PATH) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot read {STATE_PATH}: {e}")),
    };
    let plain = veritee::unseal(&sealed).map_err(|e| {
        format!(
            "{STATE_PATH} cannot be unsealed ({e}).\n\
             counter: refusing to reset the counter; remove the file to start again from 0."
        )
    })?;
    let bytes: [u8; 8] = plain
        .as_slice()
        .try_into()
        .map_err(|_| format!("{STATE_PATH} unsealed to {} bytes, expected 8", plain.len()))?;
    Ok(u64::from_le_bytes(bytes))
}

/// Seal and store the count: a temporary file renamed over the old one, so a crash leaves
/// either the old or the new count, never a torn file.
fn store_count(count: u64) -> Result<(), String> {
    let sealed =
        veritee::seal(&count.to_le_bytes()).map_err(|e| format!("cannot seal the count: {e}"))?;
    let write = || -> io::Result<()> {
        let mut file = fs::File::create(STATE_TMP_PATH)?;
        file.write_all(&sealed)?;
        file.sync_all()?;
        fs::rename(STATE_TMP_PATH, STATE_PATH)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(STATE_TMP_PATH);
        format!("cannot write {STATE_PATH}: {e}")
    })
}

fn main() -> ExitCode {
    let result = load_count().and_then(|count| {
        let next = count.checked_add(1).ok_or("the count is at its maximum")?;
        store_count(next)?;
        Ok(next)
    });
    match result {
        Ok(count) => {
            println!("count = {count}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("counter: {message}");
            ExitCode::FAILURE
        }
    }
}
