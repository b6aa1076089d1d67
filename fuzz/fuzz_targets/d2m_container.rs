//! D2mMessage::decode; what decodes re-encodes and decodes to the same message.
//! The check is `tandem_tests::fuzz_checks::d2m_container`, shared with the stable regression test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_tests::fuzz_checks::d2m_container(data));
