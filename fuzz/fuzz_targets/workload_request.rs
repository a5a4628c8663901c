//! The IoT Edge workload API fed arbitrary bytes on one connection to an edge device's socket:
//! request parsing, api-version checks, the sign body (keyId, algo, base64 data) and the
//! generation id.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgetwin_hub::fuzzing::workload_raw(data);
});
