//! Endpoints of a module in a distributed Veritee app (the Rust side of `veritee_app.h`).
//!
//! A module declares all its endpoints once, with [`app!`](crate::app!); each becomes a Wasm
//! export whose name says its kind, and `veritee build` records the endpoint table in the
//! binary, which the deployer reads. Endpoint functions are plain safe Rust:
//!
//! ```ignore
//! #![deny(unsafe_code)]
//! use veritee::app::Answer;
//!
//! veritee::app! {
//!     outputs: [toggle_led],
//!     requests: [get_presses],
//!     inputs: { button_pressed => on_press },
//!     handlers: { get_state => state },
//! }
//!
//! fn on_press(_event: &[u8]) {
//!     let _ = outputs::toggle_led.emit(b"");   // sealed by the secure world for each peer
//! }
//!
//! fn state(_request: &[u8]) -> Answer {
//!     b"on".to_vec()                            // the answer, authenticated to the caller
//! }
//! ```
//!
//! Kinds: `outputs` (events this module emits), `requests` (calls it makes, one handler
//! answers), `inputs` (called with each event that arrives), `handlers` (called with each
//! request, the returned bytes are the answer), `entries` (called by the deployer or an
//! authorised user), `public` (called with an UNAUTHENTICATED request from anyone, e.g. HTTP
//! through the node agent: treat its input as hostile; the returned bytes are the answer).
//! The groups that are present come in this order. Outputs and requests become constants in
//! the modules `outputs` and `requests` next to the macro call, so a module can only emit on
//! what it declared: a typo is a compile error.
//!
//! What a module emits while an endpoint runs is buffered and handed to the secure world in
//! one call when the endpoint returns (or before a request, or when the buffer fills), in the
//! order emitted, as `veritee_app.h` does.

use std::cell::{Cell, RefCell};

use crate::{check, len32, sys, Error};

/// What a handler or a public endpoint answers.
pub type Answer = Vec<u8>;

/// Emitted events kept before they are handed over (= VERITEE_EMIT_BUFFER of veritee_app.h).
pub const EMIT_BUFFER: usize = 1024 * 1024;
/// Room for a request's answer when [`Request::call`] is used: answers larger than this need
/// [`Request::call_with_capacity`] (the secure world refuses to write past the room given).
pub const MAX_ANSWER: usize = 64 * 1024;
/// The output name a buffer of events travels under (= VERITEE_EVENTS_OUTPUT).
const EVENTS_OUTPUT: &str = "veritee:events";

thread_local! {
    /// Events emitted by the running endpoint, as records (name length, name, data length,
    /// data; lengths 32-bit little-endian), not yet handed to the secure world.
    static EMITTED: RefCell<Vec<u8>> = RefCell::new(Vec::new());
    /// Whether an endpoint is running (then events are buffered).
    static BUFFERING: Cell<bool> = Cell::new(false);
    /// Rooms the secure world took with `veritee_alloc`, kept alive until `veritee_free`.
    static ROOMS: RefCell<Vec<Box<[u8]>>> = RefCell::new(Vec::new());
}

/// An output this module declared in [`app!`](crate::app!).
#[derive(Clone, Copy, Debug)]
pub struct Output {
    name: &'static str,
}

impl Output {
    #[doc(hidden)]
    pub const fn __declared(name: &'static str) -> Output {
        Output { name }
    }

    /// The output's name, as the descriptor's connections name it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Emit an event: the secure world seals `data` for every connection of this output.
    /// Inside an endpoint the event is buffered; the error, if any, is that of handing over
    /// earlier events ([`Error::Relay`] if the secure world refused them).
    pub fn emit(&self, data: &[u8]) -> Result<(), Error> {
        // Saturating: a payload as large as memory must take the direct path, not wrap.
        let record = data.len().saturating_add(8 + self.name.len());
        if !BUFFERING.with(Cell::get) || record > EMIT_BUFFER {
            let earlier = flush();
            let direct = raw_output(self.name.as_bytes(), data);
            return earlier.and(direct);
        }
        let mut result = Ok(());
        if EMITTED.with(|b| b.borrow().len()) + record > EMIT_BUFFER {
            result = flush();
        }
        EMITTED.with(|b| {
            let mut buf = b.borrow_mut();
            if buf.capacity() == 0 {
                buf.reserve(EMIT_BUFFER);
            }
            put_record(&mut buf, self.name.as_bytes(), data);
        });
        result
    }
}

/// A request this module declared in [`app!`](crate::app!).
#[derive(Clone, Copy, Debug)]
pub struct Request {
    name: &'static str,
}

impl Request {
    #[doc(hidden)]
    pub const fn __declared(name: &'static str) -> Request {
        Request { name }
    }

    /// The request's name, as the descriptor's connections name it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Call the request and wait for the handler's answer (at most [`MAX_ANSWER`] bytes).
    /// [`Error::Relay`] if the connection is down or the answer was refused.
    pub fn call(&self, data: &[u8]) -> Result<Answer, Error> {
        self.call_with_capacity(data, MAX_ANSWER)
    }

    /// [`Request::call`] with room for an answer of up to `capacity` bytes
    /// ([`Error::ShortBuffer`] if the answer is longer: the request was still made).
    pub fn call_with_capacity(&self, data: &[u8], capacity: usize) -> Result<Answer, Error> {
        flush()?; // events emitted before the request go first
        let mut out = vec![0u8; capacity];
        let name = self.name.as_bytes();
        // SAFETY: live slices with their lengths; the secure world writes at most `capacity`.
        let n = unsafe {
            sys::request(
                name.as_ptr(),
                len32(name),
                data.as_ptr(),
                len32(data),
                out.as_mut_ptr(),
                len32(&out),
            )
        };
        out.truncate(check(n)?);
        Ok(out)
    }
}

fn raw_output(name: &[u8], data: &[u8]) -> Result<(), Error> {
    // SAFETY: live slices with their lengths; the secure world only reads them.
    let n = unsafe { sys::output(name.as_ptr(), len32(name), data.as_ptr(), len32(data)) };
    check(n).map(|_| ())
}

fn put_record(buf: &mut Vec<u8>, name: &[u8], data: &[u8]) {
    buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
    buf.extend_from_slice(name);
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(data);
}

/// Hand the buffered events to the secure world in one call.
fn flush() -> Result<(), Error> {
    let pending = EMITTED.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if pending.is_empty() {
        return Ok(());
    }
    let result = raw_output(EVENTS_OUTPUT.as_bytes(), &pending);
    EMITTED.with(|b| {
        // Keep the allocation for the next endpoint (one 1 MiB buffer, not one per call).
        let mut buf = b.borrow_mut();
        if buf.capacity() == 0 {
            let mut reused = pending;
            reused.clear();
            *buf = reused;
        }
    });
    result
}

fn answer(data: &[u8]) {
    // SAFETY: a live slice with its length; the secure world only reads it.
    let n = unsafe { sys::respond(data.as_ptr(), len32(data)) };
    if let Err(e) = check(n) {
        eprintln!("veritee: the answer was not taken: {e}");
    }
}

/// Run `f` as an endpoint: events it emits are buffered and handed over when it returns.
fn run<R>(f: impl FnOnce() -> R) -> R {
    BUFFERING.with(|b| b.set(true));
    let result = f();
    BUFFERING.with(|b| b.set(false));
    if let Err(e) = flush() {
        eprintln!("veritee: events were not handed over: {e}");
    }
    result
}

/// The bytes the secure world passed to an endpoint export.
///
/// # Safety
/// `data..data+len` must be readable module memory for the duration of the call: the secure
/// world writes each event into a room it took with `veritee_alloc`, and calls the export
/// with that room's address and the event's length.
unsafe fn payload<'a>(data: *const u8, len: u32) -> &'a [u8] {
    if len == 0 || data.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(data, len as usize)
    }
}

#[doc(hidden)]
/// # Safety
/// As [`payload`]: only the exports generated by `app!` call it, with the secure world's
/// arguments.
pub unsafe fn __event(data: *const u8, len: u32, f: fn(&[u8])) {
    let bytes = payload(data, len);
    run(|| f(bytes));
}

#[doc(hidden)]
/// # Safety
/// As [`__event`].
pub unsafe fn __handle(data: *const u8, len: u32, f: fn(&[u8]) -> Answer) {
    let bytes = payload(data, len);
    let out = run(|| f(bytes));
    answer(&out);
}

/// One endpoint of a batch, found by its export name.
#[doc(hidden)]
pub enum __Endpoint {
    Event(fn(&[u8])),
    Handler(fn(&[u8]) -> Answer),
}

#[doc(hidden)]
/// A batch of events, each record: export name length, export name, payload length, payload
/// (lengths 32-bit little-endian); records that do not parse end the batch.
///
/// # Safety
/// As [`__event`].
pub unsafe fn __batch(data: *const u8, len: u32, find: fn(&[u8]) -> Option<__Endpoint>) {
    let bytes = payload(data, len);
    run(|| {
        let mut rest = bytes;
        while let Some((name, body, tail)) = next_record(rest) {
            match find(name) {
                Some(__Endpoint::Event(f)) => f(body),
                Some(__Endpoint::Handler(f)) => answer(&f(body)),
                None => {}
            }
            rest = tail;
        }
    });
}

fn take_u32(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let head: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some((u32::from_le_bytes(head) as usize, &bytes[4..]))
}

fn next_record(bytes: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (n, rest) = take_u32(bytes)?;
    let name = rest.get(..n)?;
    let (m, rest) = take_u32(&rest[n..])?;
    let body = rest.get(..m)?;
    Some((name, body, &rest[m..]))
}

#[doc(hidden)]
/// `veritee_alloc`: room in module memory where the secure world writes events.
pub fn __alloc(size: u32) -> *mut u8 {
    let mut room = vec![0u8; (size as usize).max(1)].into_boxed_slice();
    let ptr = room.as_mut_ptr();
    ROOMS.with(|r| r.borrow_mut().push(room));
    ptr
}

#[doc(hidden)]
/// `veritee_free`: give back a room from [`__alloc`] (an unknown pointer is ignored).
pub fn __free(ptr: *mut u8) {
    ROOMS.with(|r| r.borrow_mut().retain(|room| room.as_ptr() != ptr as *const u8));
}

/// Declare a module's endpoints (see the [module documentation](self)). Generates the Wasm
/// exports `veritee_<kind>_<name>`, `veritee_batch`, `veritee_alloc` and `veritee_free`, and
/// the modules `outputs` and `requests` holding one constant per declared name.
#[macro_export]
macro_rules! app {
    (
        $(outputs: [$($out:ident),* $(,)?] $(,)?)?
        $(requests: [$($req:ident),* $(,)?] $(,)?)?
        $(inputs: {$($input:ident => $input_fn:path),* $(,)?} $(,)?)?
        $(handlers: {$($handler:ident => $handler_fn:path),* $(,)?} $(,)?)?
        $(entries: {$($entry:ident => $entry_fn:path),* $(,)?} $(,)?)?
        $(public: {$($public:ident => $public_fn:path),* $(,)?} $(,)?)?
    ) => {
        /// The outputs this module declared.
        #[allow(non_upper_case_globals, dead_code)]
        pub mod outputs {
            $($(
                pub const $out: $crate::app::Output =
                    $crate::app::Output::__declared(stringify!($out));
            )*)?
        }
        /// The requests this module declared.
        #[allow(non_upper_case_globals, dead_code)]
        pub mod requests {
            $($(
                pub const $req: $crate::app::Request =
                    $crate::app::Request::__declared(stringify!($req));
            )*)?
        }
        $($( $crate::__veritee_export!(declare, "veritee_output_", $out); )*)?
        $($( $crate::__veritee_export!(declare, "veritee_request_", $req); )*)?
        $($( $crate::__veritee_export!(event, "veritee_input_", $input, $input_fn); )*)?
        $($( $crate::__veritee_export!(handle, "veritee_handler_", $handler, $handler_fn); )*)?
        $($( $crate::__veritee_export!(event, "veritee_entry_", $entry, $entry_fn); )*)?
        $($( $crate::__veritee_export!(handle, "veritee_public_", $public, $public_fn); )*)?

        const _: () = {
            fn find(export: &[u8]) -> ::core::option::Option<$crate::app::__Endpoint> {
                $($(
                    if export == concat!("veritee_input_", stringify!($input)).as_bytes() {
                        return Some($crate::app::__Endpoint::Event($input_fn));
                    }
                )*)?
                $($(
                    if export == concat!("veritee_handler_", stringify!($handler)).as_bytes() {
                        return Some($crate::app::__Endpoint::Handler($handler_fn));
                    }
                )*)?
                $($(
                    if export == concat!("veritee_entry_", stringify!($entry)).as_bytes() {
                        return Some($crate::app::__Endpoint::Event($entry_fn));
                    }
                )*)?
                $($(
                    if export == concat!("veritee_public_", stringify!($public)).as_bytes() {
                        return Some($crate::app::__Endpoint::Handler($public_fn));
                    }
                )*)?
                let _ = export;
                None
            }

            #[allow(unsafe_code)]
            #[export_name = "veritee_batch"]
            extern "C" fn batch(data: *const u8, len: u32) {
                // SAFETY: the secure world calls this export with a room it wrote the batch in.
                unsafe { $crate::app::__batch(data, len, find) }
            }

            #[allow(unsafe_code)]
            #[export_name = "veritee_alloc"]
            extern "C" fn alloc(size: u32) -> *mut u8 {
                $crate::app::__alloc(size)
            }

            #[allow(unsafe_code)]
            #[export_name = "veritee_free"]
            extern "C" fn free(ptr: *mut u8) {
                $crate::app::__free(ptr)
            }
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __veritee_export {
    (declare, $prefix:literal, $name:ident) => {
        const _: () = {
            // An empty export names the output or request in the binary.
            #[allow(unsafe_code)]
            #[export_name = concat!($prefix, stringify!($name))]
            extern "C" fn declaration() {}
        };
    };
    (event, $prefix:literal, $name:ident, $f:path) => {
        const _: () = {
            #[allow(unsafe_code)]
            #[export_name = concat!($prefix, stringify!($name))]
            extern "C" fn endpoint(data: *const u8, len: u32) {
                // SAFETY: the secure world calls this export with a room it wrote the event in.
                unsafe { $crate::app::__event(data, len, $f) }
            }
        };
    };
    (handle, $prefix:literal, $name:ident, $f:path) => {
        const _: () = {
            #[allow(unsafe_code)]
            #[export_name = concat!($prefix, stringify!($name))]
            extern "C" fn endpoint(data: *const u8, len: u32) {
                // SAFETY: as for an event: the request's bytes are in a room of the secure world.
                unsafe { $crate::app::__handle(data, len, $f) }
            }
        };
    };
}
