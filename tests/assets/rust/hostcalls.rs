//! Calls every host function of the SDK (veritee.h) from safe Rust, for
//! tests/test_rust_modules.py; a wrong import signature would fail instantiation.
//!
//!     hostcalls identity        measurement, evidence, sealing and their errors
//!     hostcalls secret FILE     fetch "data-key" from the secret service, decrypt FILE
#![deny(unsafe_code)]

use std::process::ExitCode;

/// Replaced by the test with the service's key (`veritee secrets key`), so it is measured.
const SERVICE_KEY_HEX: &str = "SERVICE_KEY_PLACEHOLDER";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    if text.len() != 2 * N {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn identity() -> Result<(), veritee::Error> {
    println!("measurement {}", hex(&veritee::measurement()));
    let evidence = veritee::evidence(&[7u8; 32], b"user data")?;
    println!("evidence {} bytes", evidence.len());
    match veritee::evidence(&[7u8; 4], b"") {
        Err(e) => println!("short nonce: {e}"),
        Ok(_) => println!("short nonce: accepted"),
    }
    let sealed = veritee::seal(b"the plaintext")?;
    println!("sealed {} bytes", sealed.len());
    println!("unsealed {:?}", String::from_utf8_lossy(&veritee::unseal(&sealed)?));
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    match veritee::unseal(&tampered) {
        Err(e) => println!("tampered: {e} ({e:?})"),
        Ok(_) => println!("tampered: opened"),
    }
    match veritee::unseal(&sealed[..10]) {
        Err(e) => println!("truncated: {e:?}"),
        Ok(_) => println!("truncated: opened"),
    }
    Ok(())
}

fn secret(path: &str) -> Result<(), String> {
    let key: [u8; veritee::SERVICE_KEY_LEN] =
        unhex(SERVICE_KEY_HEX).ok_or("the service key is not 130 hex digits")?;
    let data_key = veritee::secret(&key, "data-key", veritee::Suite::Classic)
        .map_err(|e| format!("no key: {e}"))?;
    let data_key: [u8; 32] = data_key.try_into().map_err(|_| "the key is not 32 bytes")?;
    let blob = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let plain = veritee::aes_gcm_open(&data_key, &blob).map_err(|e| format!("{path}: {e}"))?;
    println!("{}", String::from_utf8_lossy(&plain));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("identity") => identity().map_err(|e| e.to_string()),
        Some("secret") => secret(args.get(2).map(String::as_str).unwrap_or("")),
        _ => Err("usage: hostcalls identity | secret FILE".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hostcalls: {message}");
            ExitCode::FAILURE
        }
    }
}
