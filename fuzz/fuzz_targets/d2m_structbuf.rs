//! Reflect, ReflectAck, Reflected and ReflectedAck decoders, and close codes.
//! The check is `tandem_tests::fuzz_checks::d2m_structbuf`, shared with the stable regression test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_tests::fuzz_checks::d2m_structbuf(data));
