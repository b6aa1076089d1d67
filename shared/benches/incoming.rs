//! Native side of the browser-device budget "incoming message processing in wasm ≥ 0.8× native"
//! (BENCHMARKS.md, "Browser device"): times `app::bench::IncomingBench::process`, the very
//! function `client-wasm/bench/run.mjs` times in Chromium.
//!
//! ```text
//! cargo bench -p tandem-shared --features bench --bench incoming -- [--messages 2000] [--runs 5] [--seed 1]
//! cargo bench -p tandem-shared --features bench --bench incoming -- --x25519 2000
//! ```
//!
//! Prints one line per run (`native incoming: N messages, F frames in T ms`) and the median;
//! with `--json` one JSON object per run instead (the driver reads those).

use std::time::Instant;

use tandem_shared::app::bench::{x25519_agreements, IncomingBench};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of this thread in ms (`/proc/thread-self/stat` utime + stime, 10 ms ticks), so the
/// driver can compare CPU rather than wall time on a machine other work shares; `None` off Linux.
fn thread_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let messages = usize::try_from(arg(&args, "--messages", 2_000)).unwrap_or(2_000);
    let runs = arg(&args, "--runs", 5);
    let seed = arg(&args, "--seed", 1);
    let json = args.iter().any(|a| a == "--json");
    // `--x25519 N`: time N key agreements instead (the breakdown in BENCHMARKS.md).
    let agreements = usize::try_from(arg(&args, "--x25519", 0)).unwrap_or(0);
    if agreements > 0 {
        let cpu_before = thread_cpu_ms();
        let started = Instant::now();
        let byte = x25519_agreements(agreements, seed);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let cpu_ms = cpu_before.zip(thread_cpu_ms()).map_or(-1.0, |(a, b)| b - a);
        match byte {
            Ok(_) if json => {
                println!("{{\"agreements\":{agreements},\"ms\":{ms:.3},\"cpuMs\":{cpu_ms:.1}}}");
            }
            Ok(_) => println!(
                "native x25519: {agreements} agreements in {ms:.1} ms ({:.1} µs each)",
                ms * 1e3 / agreements as f64
            ),
            Err(e) => {
                eprintln!("x25519: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let mut times = Vec::new();
    for run in 0..runs {
        let prepared = Instant::now();
        let mut bench = match IncomingBench::prepare(messages, seed.wrapping_add(run)) {
            Ok(bench) => bench,
            Err(e) => {
                eprintln!("prepare: {e}");
                std::process::exit(1);
            }
        };
        let prepare_ms = prepared.elapsed().as_secs_f64() * 1e3;
        let cpu_before = thread_cpu_ms();
        let started = Instant::now();
        let processed = bench.process();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let cpu_ms = cpu_before.zip(thread_cpu_ms()).map_or(-1.0, |(a, b)| b - a);
        let sent = match processed.and_then(|()| bench.verify()) {
            Ok(sent) => sent,
            Err(e) => {
                eprintln!("process: {e}");
                std::process::exit(1);
            }
        };
        if json {
            println!(
                "{{\"messages\":{messages},\"frames\":{},\"sent\":{sent},\"ms\":{ms:.3},\"cpuMs\":{cpu_ms:.1},\"prepareMs\":{prepare_ms:.1}}}",
                bench.frames()
            );
        } else {
            println!(
                "native incoming: {messages} messages, {} frames in, {sent} out, processed in {ms:.1} ms, CPU {cpu_ms:.0} ms ({:.1} µs/message; prepare {prepare_ms:.0} ms)",
                bench.frames(),
                ms * 1e3 / messages as f64
            );
        }
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    if let Some(median) = times.get(times.len() / 2) {
        if !json {
            println!("native incoming median: {median:.1} ms over {runs} runs");
        }
    }
}
