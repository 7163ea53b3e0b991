//! webserver: the smart home's web page (node "home-server"), the Rust twin of
//! examples/smart-home/webserver.c: the same endpoints, so it replaces it in a deployment.
//!
//! Anyone may send it HTTP through the node agent (a public endpoint: the request is
//! unauthenticated and treated as hostile, and here it is only ever read through checked
//! slices); the count it shows comes from db through the get_presses request, an
//! authenticated, attested connection. It serves nothing until the user starts it through
//! the direct connection "init-server".
#![deny(unsafe_code)]

use std::cell::Cell;

use veritee::app::Answer;

/// The count is a decimal u64: an answer longer than that is not one.
const MAX_COUNT_ANSWER: usize = 20;
const VERSION: &str = if cfg!(WEB_V2) { "2" } else { "1" };

veritee::app! {
    requests: [get_presses],
    inputs: { init => init },
    public: { http => http },
}

thread_local! {
    static STARTED: Cell<bool> = Cell::new(false);
}

fn init(_event: &[u8]) {
    STARTED.with(|s| s.set(true));
    println!("webserver: started");
}

fn answer(status: &str, body: &str) -> Answer {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nX-Web-Version: {VERSION}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn http(request: &[u8]) -> Answer {
    if !STARTED.with(Cell::get) {
        return answer("503 Service Unavailable", "not started\n");
    }
    // Only "GET /presses" is served; the rest of the request is not even parsed.
    if !request.starts_with(b"GET /presses") {
        return answer("404 Not Found", "try GET /presses\n");
    }
    match requests::get_presses.call_with_capacity(b"", MAX_COUNT_ANSWER) {
        Ok(count) => match std::str::from_utf8(&count) {
            Ok(count) if !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()) => {
                answer("200 OK", &format!("{count}\n"))
            }
            _ => answer("502 Bad Gateway", "the database answered something else\n"),
        },
        Err(_) => answer("502 Bad Gateway", "the database did not answer\n"),
    }
}
