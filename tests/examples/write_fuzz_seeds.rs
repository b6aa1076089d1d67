//! Writes the fuzz seed inputs (`tandem_tests::fuzz_checks::seeds`) into `fuzz/regressions/`.
//!
//! `cargo run -p tandem-tests --example write_fuzz_seeds`

use std::path::Path;
use std::{fs, io};

fn main() -> io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    for (target, name, data) in tandem_tests::fuzz_checks::seeds() {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("seed-{name}")), data)?;
    }
    println!("wrote seeds under {}", root.display());
    Ok(())
}
