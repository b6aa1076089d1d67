//! The fault matrix once per row, then a 60-second soak, on real processes (RELIABILITY.md has
//! the figures of longer runs): every message sent while a fault strikes, and every message of
//! 20 groups × 3 devices writing to each other, shows on every device exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tandem_tests::reliability::{run_matrix, soak, table, Matrix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_loses_nothing_and_shows_nothing_twice() {
    let mut matrix = match Matrix::start().await {
        Ok(m) => m,
        Err(err) => panic!("the matrix did not start: {err}"),
    };
    let rows = match run_matrix(&mut matrix, 1, 10).await {
        Ok(rows) => rows,
        Err(err) => {
            matrix.fx.keep_scratch();
            panic!(
                "a run failed: {err}\nlogs kept in {}\n{}",
                matrix.fx.scratch().display(),
                matrix.fx.log_tails(40)
            );
        }
    };
    let report = table(&rows);
    eprintln!("{report}");
    if rows.iter().any(|(_, t)| !t.clean()) {
        matrix.fx.keep_scratch();
        panic!(
            "{report}\nshown per device: {:?}\nlogs kept in {}",
            matrix.shown(),
            matrix.fx.scratch().display()
        );
    }
    let report = match soak(&matrix.fx, 20, 3, 60, Duration::from_millis(100)).await {
        Ok(report) => report,
        Err(err) => {
            matrix.fx.keep_scratch();
            panic!(
                "the soak failed: {err}\nlogs kept in {}",
                matrix.fx.scratch().display()
            );
        }
    };
    eprintln!("soak: {report:?}");
    assert!(report.sent > 100, "{report:?}");
    if !report.counts.clean() {
        matrix.fx.keep_scratch();
        panic!(
            "soak: {report:?}\nlogs kept in {}",
            matrix.fx.scratch().display()
        );
    }
}
