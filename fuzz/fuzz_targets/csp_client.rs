//! A CspClient awaiting server-hello fed the input in chunks (optionally after a valid prefix).
//! The check is `tandem_tests::fuzz_checks::csp_client`, shared with the stable regression test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_tests::fuzz_checks::csp_client(data));
