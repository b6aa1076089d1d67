//! ClientUrlInfo::from_path on the input as text, id_backup::decode on well-formed backups.
//! The check is `tandem_tests::fuzz_checks::url_and_backup`, shared with the stable regression test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_tests::fuzz_checks::url_and_backup(data));
