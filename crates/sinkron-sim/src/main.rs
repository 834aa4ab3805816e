//! `sinkron-sim`: runs simulation seeds and reports each one.
//!
//! ```text
//! sinkron-sim --seed S                 replay one seed, with its trace tail
//! sinkron-sim --seeds N [--start S]    run seeds S..S+N (S defaults to 0)
//! sinkron-sim ... --jobs J             run on J threads (default: every core)
//! sinkron-sim ... --plant BUG --expect-failure
//!                                      (with --features planted-bugs) succeed only if a seed
//!                                      catches the planted bug
//! ```
//!
//! Every seed prints one line with its derived parameters and result; a failure prints the
//! violation, the last events of its trace and the command that replays it.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use sinkron_sim::Outcome;

struct Args {
    start: u64,
    count: u64,
    jobs: usize,
    expect_failure: bool,
    plant: Option<String>,
    verbose: bool,
    tail: Option<usize>,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: sinkron-sim [--seed S | --seeds N [--start S]] [--jobs J] [--verbose] [--tail N]\n\
         \x20                  [--plant BUG --expect-failure]\n\
         BUG (needs --features planted-bugs): arrival-order, timestamp-cursor, no-dedupe,\n\
         \x20   pull-overwrites-pending, forgotten-numbering, retry-after-401, forgotten-parked,\n\
         \x20   merge-order, merge-twice, merge-arrival, cap-reads-too-few,\n\
         \x20   refusal-drops-batch, coalesce-across-fields, offline-stamped-now,\n\
         \x20   unreachable-stamped-now, stale-snapshot-taken, clamp-keeps-first,\n\
         \x20   takeover-keeps-foreign, snapshot-ignores-records, unreachable-ignored,\n\
         \x20   asker-not-told, unreachable-lingers, proxy-refusal-taken,\n\
         \x20   whole-writes-coalesce, takeover-skips-older, guest-tabs-dropped,\n\
         \x20   wipe-drops-empty, leader-drops-guest"
    );
    ExitCode::from(2)
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        start: 0,
        count: 1,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        expect_failure: false,
        plant: None,
        verbose: false,
        tail: None,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> Result<u64, String> {
        v.ok_or_else(|| format!("{flag} needs a value"))?
            .parse::<u64>()
            .map_err(|e| format!("{flag}: {e}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seed" => {
                args.start = number(it.next(), "--seed")?;
                args.count = 1;
                args.verbose = true;
            }
            "--seeds" => args.count = number(it.next(), "--seeds")?,
            "--start" => args.start = number(it.next(), "--start")?,
            "--jobs" => args.jobs = number(it.next(), "--jobs")?.max(1) as usize,
            "--expect-failure" => args.expect_failure = true,
            "--verbose" => args.verbose = true,
            "--tail" => args.tail = Some(number(it.next(), "--tail")? as usize),
            "--plant" => args.plant = Some(it.next().ok_or("--plant needs a bug name")?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

#[cfg(feature = "planted-bugs")]
fn plant(name: &str) -> Result<(), String> {
    use sinkron_core::planted::{plant, Bug};
    let bug = Bug::ALL
        .into_iter()
        .find(|b| b.name() == name)
        .ok_or_else(|| format!("unknown bug {name}"))?;
    plant(bug);
    Ok(())
}

#[cfg(not(feature = "planted-bugs"))]
fn plant(_: &str) -> Result<(), String> {
    Err("--plant needs a build with --features planted-bugs".into())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return usage();
        }
    };
    if let Some(bug) = &args.plant {
        if let Err(e) = plant(bug) {
            eprintln!("error: {e}");
            return usage();
        }
        println!("planted bug: {bug}");
    }
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicU64::new(u64::MAX));
    let (tx, rx) = mpsc::channel::<Outcome>();
    let workers: Vec<_> = (0..args.jobs.min(args.count.max(1) as usize))
        .map(|_| {
            let (next, stop, tx) = (next.clone(), stop.clone(), tx.clone());
            let (start, count, expect, tail) =
                (args.start, args.count, args.expect_failure, args.tail);
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || i > stop.load(Ordering::Relaxed) {
                    return;
                }
                let seed = start + i;
                let mut params = sinkron_sim::Params::from_seed(seed);
                if let Some(tail) = tail {
                    params.trace_tail = tail;
                }
                let outcome = sinkron_sim::run_with(seed, params);
                if expect && outcome.violation.is_some() {
                    stop.fetch_min(i, Ordering::Relaxed);
                }
                if tx.send(outcome).is_err() {
                    return;
                }
            })
        })
        .collect();
    drop(tx);

    // Report in seed order, whatever order the threads finish in.
    let mut pending: BTreeMap<u64, Outcome> = BTreeMap::new();
    let mut expected = args.start;
    let mut failed: Option<u64> = None;
    let mut ran = 0u64;
    for outcome in rx {
        pending.insert(outcome.seed, outcome);
        while let Some(outcome) = pending.remove(&expected) {
            expected += 1;
            if failed.is_some() && args.expect_failure {
                continue;
            }
            ran += 1;
            report(&outcome, &args);
            if outcome.violation.is_some() && failed.is_none() {
                failed = Some(outcome.seed);
            }
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{ran} seeds in {secs:.1} s ({:.1} seeds/s, {} jobs): {}",
        ran as f64 / secs.max(1e-9),
        args.jobs,
        match failed {
            Some(seed) => format!("FAILED at seed {seed}"),
            None => "all passed".to_owned(),
        }
    );
    match (failed, args.expect_failure) {
        (None, false) => ExitCode::SUCCESS,
        (Some(seed), true) => {
            println!(
                "planted bug found after {} seeds (first failing seed {seed})",
                seed - args.start + 1
            );
            ExitCode::SUCCESS
        }
        (None, true) => {
            println!("expected a failure, but every seed passed");
            ExitCode::FAILURE
        }
        (Some(_), false) => ExitCode::FAILURE,
    }
}

fn report(outcome: &Outcome, args: &Args) {
    println!("seed {}: {}", outcome.seed, outcome.params);
    let verdict = match &outcome.violation {
        None => "ok".to_owned(),
        Some(v) => format!("FAILED {v}"),
    };
    println!(
        "  {verdict} — {} steps, {} requests, {} s virtual, trace {:016x}",
        outcome.steps,
        outcome.requests,
        outcome.elapsed_ms / 1000,
        outcome.trace_hash
    );
    if outcome.violation.is_some() || (args.verbose && args.count == 1) {
        println!("  last events:");
        for line in &outcome.trace_tail {
            println!("    {line}");
        }
    }
    if outcome.violation.is_some() {
        let features = if args.plant.is_some() {
            " --features planted-bugs"
        } else {
            ""
        };
        let plant = args
            .plant
            .as_deref()
            .map(|b| format!(" --plant {b}"))
            .unwrap_or_default();
        println!(
            "  replay: cargo run -p sinkron-sim --release{features} -- --seed {}{plant}",
            outcome.seed
        );
    }
}
