//! CSP payloads, message structs, e2e and group containers, receipts, extensions, the unit
//! splitter.
//! The check is `tandem_tests::fuzz_checks::csp_payload`, shared with the stable regression test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_tests::fuzz_checks::csp_payload(data));
