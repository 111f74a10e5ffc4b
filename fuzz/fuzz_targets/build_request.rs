//! Fuzz target: see `tvix_oci_tests::build_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tvix_oci_tests::build_request(data));
