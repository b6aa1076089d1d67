//! Replays every input under `fuzz/regressions/<target>/` through the check its fuzz target runs
//! (`tandem_tests::fuzz_checks`), on the stable toolchain, so a crash found once stays fixed and
//! the valid seeds keep decoding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use tandem_tests::fuzz_checks::{seeds, TARGETS};

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fuzz")
        .join("regressions")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} is not readable: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_regression_input_passes_its_check() {
    let root = regressions_dir();
    assert!(
        root.is_dir(),
        "{} is missing: the regression inputs must be committed",
        root.display()
    );
    for entry in fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(target, _)| *target == name),
            "fuzz/regressions/{name} belongs to no fuzz target"
        );
    }
    let mut failures = Vec::new();
    for (target, check) in TARGETS {
        let files = files_in(&root.join(target));
        assert!(
            !files.is_empty(),
            "fuzz/regressions/{target} has no inputs: every target keeps at least its seeds"
        );
        for file in files {
            let data = fs::read(&file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "checks failed on: {failures:#?}");
}

#[test]
fn every_seed_passes_its_check() {
    for (target, name, data) in seeds() {
        let (_, check) = TARGETS.iter().find(|(t, _)| *t == target).unwrap();
        assert!(
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_ok(),
            "seed {target}/{name}"
        );
    }
}

/// The committed `seed-*` files are exactly what `seeds()` builds, so the fuzz corpus and the
/// seeds cannot drift apart. After changing the seeds, rewrite the files with
/// `cargo run -p tandem-tests --example write_fuzz_seeds`.
#[test]
fn committed_seed_files_match_seeds() {
    let root = regressions_dir();
    for (target, name, data) in seeds() {
        let path = root.join(target).join(format!("seed-{name}"));
        let committed = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(committed, data, "{} differs from seeds()", path.display());
    }
}
