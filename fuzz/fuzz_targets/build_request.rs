//! Fuzz target: see `tvix_oci_fuzz_checks::build_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tvix_oci_fuzz_checks::build_request(data));
