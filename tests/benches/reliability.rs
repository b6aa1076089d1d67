//! The fault matrix N times per row and the soak, on real processes; figures go to
//! RELIABILITY.md.
//!
//! `cargo bench -p tandem-tests --bench reliability -- [--runs 5] [--per-side 20]
//! [--soak-secs 600] [--groups 20] [--devices 3] [--interval-ms 100] [--skip-matrix]
//! [--skip-soak]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use clap::Parser;
use tandem_tests::harness::use_release_chat_server;
use tandem_tests::reliability::{run_matrix, soak, table, Matrix};

#[derive(Parser, Debug)]
struct Args {
    /// Runs per row of the matrix.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Messages from each identity per run.
    #[arg(long, default_value_t = 20)]
    per_side: usize,
    /// Seconds of soak messaging.
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,
    /// Soak groups (identities).
    #[arg(long, default_value_t = 20)]
    groups: usize,
    /// Devices per soak group.
    #[arg(long, default_value_t = 3)]
    devices: usize,
    /// One message every this many milliseconds, across the soak.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    #[arg(long)]
    skip_matrix: bool,
    #[arg(long)]
    skip_soak: bool,
    /// Ignored: `cargo bench` passes it.
    #[arg(long)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    println!(
        "nproc {}, load {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    use_release_chat_server()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let started = Instant::now();
    let mut matrix = Matrix::start()
        .await
        .unwrap_or_else(|err| panic!("the matrix did not start: {err}"));
    println!("up in {:.1} s", started.elapsed().as_secs_f64());
    if !args.skip_matrix {
        let rows = run_matrix(&mut matrix, args.runs, args.per_side)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        println!("\n{}", table(&rows));
    }
    if !args.skip_soak {
        let report = soak(
            &matrix.fx,
            args.groups,
            args.devices,
            args.soak_secs,
            Duration::from_millis(args.interval_ms),
        )
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        let c = &report.counts;
        let growth = |early: u64, end: u64| {
            if early == 0 {
                f64::NAN
            } else {
                #[allow(clippy::cast_precision_loss)]
                let r = end as f64 / early as f64;
                r
            }
        };
        println!(
            "\nsoak: {} groups × {} devices, {} s, {} messages sent; delivered {} / {} \
             (message × device), duplicates shown {}, lost {}\n\
             workerd RSS {} KiB early → {} KiB at the end ({:.3} ×); chat server {} KiB → {} KiB \
             ({:.3} ×)",
            report.groups,
            report.devices_per_group,
            report.secs,
            report.sent,
            c.delivered,
            c.expected,
            c.duplicates,
            c.lost,
            report.rss_early_kib.0,
            report.rss_end_kib.0,
            growth(report.rss_early_kib.0, report.rss_end_kib.0),
            report.rss_early_kib.1,
            report.rss_end_kib.1,
            growth(report.rss_early_kib.1, report.rss_end_kib.1),
        );
        println!(
            "RSS samples (s, workerd KiB, chat server KiB): {:?}",
            report.rss_samples
        );
        println!("wasm memory samples (s, bytes): {:?}", report.wasm_samples);
        println!(
            "V8 heap samples (s, used KiB, total KiB): {:?}",
            report
                .heap_samples
                .iter()
                .map(|(s, h)| (s, h.used / 1024, h.total / 1024))
                .collect::<Vec<_>>()
        );
        for (when, gc) in [("early", report.gc_early), ("end", report.gc_end)] {
            match gc {
                Some(gc) => println!(
                    "forced full GC ({when}): workerd {} → {} KiB; V8 heap used {} → {} KiB, \
                     total {} → {} KiB",
                    gc.workerd_before_kib,
                    gc.workerd_after_kib,
                    gc.heap_before.used / 1024,
                    gc.heap_after.used / 1024,
                    gc.heap_before.total / 1024,
                    gc.heap_after.total / 1024,
                ),
                None => println!("forced full GC ({when}): not measured"),
            }
        }
        if let (Some(early), Some(end)) = (report.gc_early, report.gc_end) {
            println!(
                "after a forced full GC: workerd {} KiB early → {} KiB at the end ({:.3} ×); \
                 V8 heap used {} → {} KiB",
                early.workerd_after_kib,
                end.workerd_after_kib,
                growth(early.workerd_after_kib, end.workerd_after_kib),
                early.heap_after.used / 1024,
                end.heap_after.used / 1024,
            );
        }
        println!(
            "device connections closed (code: count): {:?}",
            report.closes
        );
    }
}
