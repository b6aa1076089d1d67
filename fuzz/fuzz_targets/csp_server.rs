//! A fresh CspServer fed the input in chunks (optionally after a valid handshake prefix).
//! The check is `tandem_tests::fuzz_checks::csp_server`, shared with the stable regression test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_tests::fuzz_checks::csp_server(data));
