//! The raw imports of module `veritee` (see sdk/veritee.h and sdk/veritee_app.h): private,
//! reached only through the safe functions of this crate.

#[link(wasm_import_module = "veritee")]
extern "C" {
    pub fn seal(input: *const u8, in_len: u32, out: *mut u8, out_cap: u32) -> i32;
    pub fn unseal(input: *const u8, in_len: u32, out: *mut u8, out_cap: u32) -> i32;
    pub fn measurement(out: *mut u8) -> i32;
    pub fn evidence(
        nonce: *const u8,
        nonce_len: u32,
        user_data: *const u8,
        user_data_len: u32,
        out: *mut u8,
        out_cap: u32,
    ) -> i32;
    pub fn secret(
        service_key: *const u8,
        service_key_len: u32,
        name: *const u8,
        name_len: u32,
        out: *mut u8,
        out_cap: u32,
        flags: u32,
    ) -> i32;
    pub fn aes_gcm_open(key: *const u8, input: *const u8, in_len: u32, out: *mut u8, out_cap: u32)
        -> i32;
    pub fn output(name: *const u8, name_len: u32, data: *const u8, len: u32) -> i32;
    pub fn request(
        name: *const u8,
        name_len: u32,
        data: *const u8,
        len: u32,
        out: *mut u8,
        out_cap: u32,
    ) -> i32;
    pub fn respond(data: *const u8, len: u32) -> i32;
}
