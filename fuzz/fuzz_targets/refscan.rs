//! Fuzz target: see `tvix_oci_tests::refscan`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tvix_oci_tests::refscan(data));
