//! The hub's service REST API fed arbitrary input two ways: as raw bytes on an HTTP/1.1
//! connection (request line, headers, body, authentication), and as `METHOD PATH\nBODY` sent with
//! a valid `iothubowner` token, so that the routes and their body decoding are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgetwin_hub::fuzzing::rest_raw(data);
    let _ = edgetwin_hub::fuzzing::rest_authenticated(data);
});
