//! The simulation as part of the test suite: a fixed range of seeds must hold every invariant,
//! and a seed must replay to the same trace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Seeds every test run checks (`cargo xtask test`); the long mode runs any number.
const SEEDS: u64 = 200;

#[test]
fn every_invariant_holds_for_two_hundred_seeds() {
    let next = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= SEEDS {
                    return;
                }
                let outcome = sinkron_sim::run(seed);
                if let Some(violation) = outcome.violation {
                    let mut report = format!(
                        "seed {seed} ({}): {violation}\n  replay: cargo run -p sinkron-sim \
                         --release -- --seed {seed}\n  last events:\n",
                        outcome.params
                    );
                    for line in outcome.trace_tail.iter().rev().take(20).rev() {
                        report.push_str(&format!("    {line}\n"));
                    }
                    failures.lock().expect("no panics while held").push(report);
                }
            });
        }
    });
    let failures = failures.into_inner().expect("no panics while held");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for seed in [3, 11_111] {
        let first = sinkron_sim::run(seed);
        let second = sinkron_sim::run(seed);
        assert!(
            first.steps > 100,
            "seed {seed} ran only {} steps",
            first.steps
        );
        assert_eq!(
            (first.trace_hash, first.steps, first.requests),
            (second.trace_hash, second.steps, second.requests),
            "seed {seed} ran differently twice"
        );
    }
}

#[test]
fn different_seeds_give_different_runs() {
    assert_ne!(
        sinkron_sim::run(1).trace_hash,
        sinkron_sim::run(2).trace_hash
    );
}

/// The seeds checked include compaction (so resets), with small pages in some (so whole
/// states in pages), and sessions ended elsewhere (so 401s).
#[test]
fn the_seeds_compact_tombstones_and_page_whole_states() {
    let params: Vec<_> = (0..SEEDS).map(sinkron_sim::Params::from_seed).collect();
    let compacting = params.iter().filter(|p| p.compaction).count();
    let paged = params
        .iter()
        .filter(|p| p.compaction && p.page_size < 8)
        .count();
    assert!(compacting >= 50, "{compacting} of {SEEDS} seeds compact");
    assert!(
        paged >= 20,
        "{paged} of {SEEDS} seeds compact with small pages"
    );
    let revoking = params.iter().filter(|p| p.revocation).count();
    assert!(
        revoking >= 40,
        "{revoking} of {SEEDS} seeds end sessions elsewhere"
    );
}
