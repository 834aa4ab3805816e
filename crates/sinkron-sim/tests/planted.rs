//! The simulation's teeth: with a known bug planted, some seed within a bounded number must
//! fail. Built only with `--features planted-bugs` (`cargo xtask test` runs it as its own
//! step), so a normal build never contains the bugs.
#![cfg(feature = "planted-bugs")]

use std::process::Command;

/// Runs the simulation binary with `bug` planted over at most `seeds` seeds and asserts that
/// it reports a violation. Each run is its own process: a planted bug is process-wide.
fn finds(bug: &str, seeds: u64) {
    finds_from(bug, 0, seeds);
}

/// [`finds`] over the seeds from `start`: for a bug only rare seeds meet.
fn finds_from(bug: &str, start: u64, seeds: u64) {
    let output = Command::new(env!("CARGO_BIN_EXE_sinkron-sim"))
        .args(["--plant", bug, "--expect-failure", "--start"])
        .arg(start.to_string())
        .arg("--seeds")
        .arg(seeds.to_string())
        .output()
        .expect("run sinkron-sim");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "planted bug {bug} not found in {seeds} seeds:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found = stdout
        .lines()
        .find(|l| l.starts_with("planted bug found"))
        .unwrap_or("?");
    eprintln!("{bug}: {found}");
}

#[test]
fn merge_by_arrival_order_is_caught() {
    finds("arrival-order", 20);
}

#[test]
fn a_timestamp_cursor_is_caught() {
    finds("timestamp-cursor", 20);
}

#[test]
fn applying_retried_mutations_again_is_caught() {
    finds("no-dedupe", 50);
}

#[test]
fn a_pull_overwriting_pending_writes_is_caught() {
    finds("pull-overwrites-pending", 20);
}

#[test]
fn a_reloaded_tab_that_forgets_its_numbering_is_caught() {
    finds("forgotten-numbering", 10);
}

#[test]
fn a_401_that_does_not_stop_the_tab_is_caught() {
    finds("retry-after-401", 40);
}

#[test]
fn a_sign_in_that_leaves_parked_writes_behind_is_caught() {
    finds("forgotten-parked", 20);
}

#[test]
fn a_per_field_merge_that_depends_on_the_order_is_caught() {
    finds("merge-order", 20);
}

#[test]
fn a_per_field_merge_that_changes_on_a_write_again_is_caught() {
    finds("merge-twice", 20);
}

#[test]
fn a_per_field_merge_by_arrival_instead_of_newest_is_caught() {
    finds("merge-arrival", 20);
}

#[test]
fn a_cap_that_reads_too_few_of_the_oldest_records_is_caught() {
    finds("cap-reads-too-few", 20);
}

#[test]
fn a_refusal_that_drops_the_whole_push_is_caught() {
    finds("refusal-drops-batch", 200);
}

#[test]
fn a_proxy_error_taken_as_the_servers_refusal_is_caught() {
    finds("proxy-refusal-taken", 300);
}

#[test]
fn coalescing_writes_of_different_fields_is_caught() {
    finds("coalesce-across-fields", 50);
}

#[test]
fn an_offline_position_stamped_now_is_caught() {
    finds("offline-stamped-now", 150);
}

#[test]
fn a_position_stamped_now_while_requests_fail_is_caught() {
    finds("unreachable-stamped-now", 150);
}

/// Checked against the world's own account of the device being cut off, not the engine's:
/// a tab beside one whose request failed must count itself cut off once the channel could
/// have told it.
#[test]
fn a_tab_ignoring_that_its_device_is_cut_off_is_caught() {
    finds("unreachable-ignored", 20);
}

/// A tab opened during an outage asks the leader for a pull; a leader cut off that does not
/// tell it leaves it stamping positions now.
#[test]
fn a_leader_not_telling_a_tab_that_asks_is_caught() {
    finds("asker-not-told", 200);
}

/// A tab whose own requests failed, then another tab led: once healed, the next leader
/// syncs, and a status still saying the server cannot be reached keeps the run from
/// converging (first found at seed 85).
#[test]
fn a_tab_still_saying_unreachable_after_its_leader_synced_is_caught() {
    finds("unreachable-lingers", 200);
}

/// A page kept from an earlier render, older than what its device stored, opened again:
/// the check at a page's start sees its cursor go back (found at seed 0; before that check,
/// only the cursor check found it, rarely: seed 1303 once, not within 1,400 seeds later).
#[test]
fn a_stale_server_rendered_snapshot_taken_is_caught() {
    finds("stale-snapshot-taken", 20);
}

#[test]
fn clamped_writes_of_one_push_stored_with_one_stamp_is_caught() {
    finds("clamp-keeps-first", 20);
}

#[test]
fn a_takeover_that_leaves_the_gone_tabs_writes_shown_is_caught() {
    finds("takeover-keeps-foreign", 40);
}

/// A page kept from an earlier render opened while another tab of its device receives a
/// whole state (so no cursor is stored, only that state's records as they come): the check
/// at a page's start sees it open below the records stored (found at seed 3).
#[test]
fn a_snapshot_older_than_the_records_stored_taken_is_caught() {
    finds("snapshot-ignores-records", 20);
}

/// Found only by "no write lost": the tab shows its newest write either way, and the server
/// holds what it was sent; the field the replaced write set is simply never sent.
#[test]
fn a_whole_record_taking_the_place_of_one_holding_other_fields_is_caught() {
    finds("whole-writes-coalesce", 20);
}

/// Found only by "no write lost": the gone tab's write shows nowhere once skipped.
#[test]
fn a_takeover_that_skips_writes_older_than_what_the_tab_shows_is_caught() {
    finds("takeover-skips-older", 60);
}

/// Found only by "no write lost": a gone guest tab's writes show nowhere once dropped.
#[test]
fn a_sign_in_that_drops_the_guest_s_tabs_gone_is_caught() {
    finds("guest-tabs-dropped", 60);
}

/// Found only where other tabs' writes reach a tab's copy of the storage late, and rarely:
/// seed 3,851 is the first to find it (`sinkron-sim --plant wipe-drops-empty
/// --expect-failure --seeds N`, which finds it again when a change to the simulation moves
/// it); the seeds around it guard it here.
#[test]
fn a_wipe_dropping_the_outboxes_it_reads_as_empty_is_caught() {
    finds_from("wipe-drops-empty", 3800, 100);
}

/// Found by "no write lost" where a guest outbox outlives the sign-in's takeover (written as
/// the device signed in, within the storage's lag or the tab locks' answer): seed 44 is the
/// only one of the first 300.
#[test]
fn a_leader_wiping_the_guest_s_outboxes_is_caught() {
    finds("leader-drops-guest", 60);
}

/// Found by "no write lost" where an outbox leaves in several pushes: in the seeds whose push
/// budget holds a few writes (`push_bytes`), as a device back online with a long outbox has.
#[test]
fn a_cut_push_acknowledging_the_writes_it_left_behind_is_caught() {
    finds("push-cut-acks-all", 60);
}

/// Found by "sticky true kept": a `completed` set `true`, then un-marked or deleted (or
/// written whole without it) before the push, is never kept by the server.
#[test]
fn a_sticky_true_replaced_unsent_is_caught() {
    finds("sticky-coalesced", 60);
}

/// Found by "no write lost", rarely (seed 132,258, the one failure of seeds 116,440–138,939):
/// a tab wrote and closed within the few milliseconds another tab's copy of the storage lagged
/// behind, and the leader, taking the closed tab's outbox over from that copy, dropped the
/// stored copy.
#[test]
fn a_takeover_dropping_a_lagging_copy_is_caught() {
    finds_from("takeover-drops-lagging", 132_258, 1);
}
