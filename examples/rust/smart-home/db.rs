//! db: the smart home's press counter (node "home-server"), the Rust twin of
//! examples/smart-home/db.c: the same endpoints and the same sealed file, so it replaces it
//! in a deployment.
//!
//! Counts increment_presses events and answers get_presses (requests from the webserver, or
//! the user's direct connection "get-presses"). The count is sealed into the module's
//! private storage (/data), so it survives a restart of its node; only this exact binary on
//! this TEE can unseal it.
#![deny(unsafe_code)]

use std::cell::Cell;
use std::fs;

use veritee::app::Answer;

const COUNT_FILE: &str = "/data/presses.sealed";
const COUNT_TMP: &str = "/data/presses.sealed.tmp";

veritee::app! {
    inputs: { increment_presses => increment_presses },
    handlers: { get_presses => get_presses },
}

thread_local! {
    /// The count, read from the sealed file on first use.
    static COUNT: Cell<Option<u64>> = Cell::new(None);
}

fn load() -> u64 {
    if let Some(count) = COUNT.with(Cell::get) {
        return count;
    }
    let count = match fs::read(COUNT_FILE) {
        Err(_) => 0, // nothing kept yet
        Ok(sealed) => match veritee::unseal(&sealed).map(|p| <[u8; 8]>::try_from(p.as_slice())) {
            Ok(Ok(bytes)) => u64::from_le_bytes(bytes),
            Ok(Err(_)) => {
                println!("db: sealed count has the wrong length: starting from 0");
                0
            }
            Err(e) => {
                println!("db: sealed count does not open ({e}): starting from 0");
                0
            }
        },
    };
    COUNT.with(|c| c.set(Some(count)));
    count
}

fn save(count: u64) {
    let sealed = match veritee::seal(&count.to_le_bytes()) {
        Ok(sealed) => sealed,
        Err(e) => {
            println!("db: sealing failed ({e})");
            return;
        }
    };
    if fs::write(COUNT_TMP, &sealed).and_then(|()| fs::rename(COUNT_TMP, COUNT_FILE)).is_err() {
        println!("db: cannot store the count");
    }
}

fn increment_presses(_event: &[u8]) {
    let count = load().saturating_add(1);
    COUNT.with(|c| c.set(Some(count)));
    save(count);
}

fn get_presses(_request: &[u8]) -> Answer {
    load().to_string().into_bytes()
}
