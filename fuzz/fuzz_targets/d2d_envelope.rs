//! open_envelope and the other open_* functions under fixed group keys, and the raw
//! protobuf decode of every d2d message.
//! The check is `tandem_tests::fuzz_checks::d2d_envelope`, shared with the stable regression test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_tests::fuzz_checks::d2d_envelope(data));
