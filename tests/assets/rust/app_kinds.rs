//! One endpoint of every kind, for tests/test_rust_modules.py (called through a Reactor).
#![deny(unsafe_code)]

use veritee::app::Answer;

veritee::app! {
    outputs: [pressed],
    requests: [lookup],
    inputs: { event => event },
    handlers: { echo => echo },
    entries: { press => press },
    public: { page => page },
}

fn event(data: &[u8]) {
    let _ = outputs::pressed.emit(&[b"event:", data].concat());
}

fn echo(data: &[u8]) -> Answer {
    [b"echo:", data].concat()
}

fn press(data: &[u8]) {
    let _ = outputs::pressed.emit(data);
    let _ = outputs::pressed.emit(b"second");
}

fn page(data: &[u8]) -> Answer {
    // Events emitted before a request go first; the answer comes back to the caller.
    let _ = outputs::pressed.emit(b"before the request");
    match requests::lookup.call(data) {
        Ok(answer) => [b"looked up:", answer.as_slice()].concat(),
        Err(e) => format!("no answer: {e}").into_bytes(),
    }
}
