//! controller: the smart home's logic (node "home-server"), the Rust twin of
//! examples/smart-home/controller.c: the same endpoints, so it replaces it in a deployment.
//!
//! Each button press toggles the LED and counts one press in the database. Nothing but an
//! authentic event from the attested button_driver reaches button_pressed: the secure world
//! checks each event's connection, counter and tag before this code runs.
#![deny(unsafe_code)]

veritee::app! {
    outputs: [toggle_led, increment_presses],
    inputs: { button_pressed => button_pressed },
}

fn button_pressed(_event: &[u8]) {
    // A tampered controller (built with `-D EVIL`) counts every press twice. Its
    // measurement differs, so it fails attestation and is never connected.
    if cfg!(EVIL) {
        let _ = outputs::increment_presses.emit(b"");
    }
    for output in [outputs::toggle_led, outputs::increment_presses] {
        if let Err(e) = output.emit(b"") {
            eprintln!("controller: {} not emitted: {e}", output.name());
        }
    }
}
