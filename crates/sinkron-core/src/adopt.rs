//! Which stored outbox a starting tab takes over.
//!
//! A device's storage holds one outbox per client id (with its numbering). A tab that starts
//! takes one of them over, with its client id, so that writes a closed tab never sent still
//! go out under their original ids (the server dedupes whatever did arrive) and ids are
//! reused with their numbering instead of piling up. The driver supplies what is stored and
//! tries the candidates in the order given here, taking the first whose owner it can tell is
//! gone (in a browser: the first whose tab lock it gets). It owns this choice only; restoring
//! the chosen outbox is [`crate::Engine::restore_outbox`].

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::protocol::Mutation;

/// An outbox to hand [`crate::Engine::unpark`]: its client id and its writes.
pub type Parked = (String, Vec<Mutation>);

/// What a driver hands [`crate::Engine::unpark`] for a `Command::Unpark`: of a scope's stored
/// outboxes (client id → next id and writes), those that hold writes. For drivers that keep
/// the outboxes in a map (the native client, the simulation).
pub fn parked(outboxes: &BTreeMap<String, (u64, Vec<Mutation>)>) -> Vec<Parked> {
    outboxes
        .iter()
        .filter(|(_, (_, mutations))| !mutations.is_empty())
        .map(|(client_id, (_, mutations))| (client_id.clone(), mutations.clone()))
        .collect()
}

/// What [`Persist::Wipe`](crate::Persist::Wipe) leaves of a scope's stored outboxes, for
/// drivers that keep them in a map (the native client, the simulation): with
/// `keep_pending`, all of them; without, none.
pub fn kept_by_wipe(
    outboxes: BTreeMap<String, (u64, Vec<Mutation>)>,
    keep_pending: bool,
) -> BTreeMap<String, (u64, Vec<Mutation>)> {
    if !keep_pending {
        return BTreeMap::new();
    }
    #[cfg(feature = "planted-bugs")]
    if crate::planted::planted(crate::planted::Bug::WipeDropsEmpty) {
        let mut outboxes = outboxes;
        outboxes.retain(|_, (_, mutations)| !mutations.is_empty());
        return outboxes;
    }
    outboxes
}

/// How eagerly a starting tab takes over one stored outbox: [`NEVER`], else lower first
/// (ties in the order the driver found them).
///
/// - `is_previous`: this outbox is the one of the client id the tab had before it was
///   reloaded or restored (kept in `sessionStorage`). Holding writes, it comes first: they
///   may be on their way under their ids. Holding none, it comes after the closed tabs'
///   unsent writes, which the tab takes first (else they would wait for a tab started
///   afresh, which a user who only reloads never starts).
/// - Other outboxes only when the driver can tell a closed tab from a live one
///   (`owners_known`: Web Locks): those with `pending` writes (they must be sent), and, for
///   a tab that had no client id before (`previous_known` false), then the empty ones (to
///   reuse an id with its numbering).
/// - Otherwise never: a live tab's outbox must not be taken over.
///
/// Only stored outboxes are ranked: an id with nothing stored is never taken over, since
/// without its numbering the tab must keep its fresh id.
fn adoption_rank(
    is_previous: bool,
    pending: usize,
    previous_known: bool,
    owners_known: bool,
) -> u8 {
    match (is_previous, owners_known, pending > 0, previous_known) {
        (true, _, true, _) => 0,
        (true, ..) => 2,
        (false, true, true, _) => 1,
        (false, true, false, false) => 3,
        _ => NEVER,
    }
}

/// The rank of an outbox never taken over.
const NEVER: u8 = 4;

/// `adoption_rank` over a list of stored outboxes, `(client id, pending writes)`: the
/// indices of those to try, in order.
pub fn adoption_order(
    previous: Option<&str>,
    stored: &[(String, usize)],
    owners_known: bool,
) -> Vec<usize> {
    let rank = |(id, pending): &(String, usize)| {
        adoption_rank(
            previous == Some(id.as_str()),
            *pending,
            previous.is_some(),
            owners_known,
        )
    };
    let mut order = Vec::new();
    for wanted in 0..NEVER {
        // Positions by `enumerate`, not indexing: no bounds-check panic in the browser build.
        for (i, s) in stored.iter().enumerate() {
            if rank(s) == wanted {
                order.push(i);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::borrow::ToOwned;
    use alloc::vec;

    fn stored(list: &[(&str, usize)]) -> Vec<(String, usize)> {
        list.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect()
    }

    fn ids(s: &[(String, usize)], order: Vec<usize>) -> Vec<&str> {
        order.into_iter().map(|i| s[i].0.as_str()).collect()
    }

    #[test]
    fn a_reloaded_tab_with_writes_of_its_own_resumes_its_own_outbox_first() {
        let s = stored(&[("a", 3), ("b", 0), ("mine", 1)]);
        // Its own first; another's unsent writes only if another tab holds its id (a copy of
        // a tab, which starts with the original's `sessionStorage`).
        assert_eq!(
            ids(&s, adoption_order(Some("mine"), &s, true)),
            vec!["mine", "a"]
        );
        assert_eq!(
            ids(&s, adoption_order(Some("mine"), &s, false)),
            vec!["mine"]
        );
    }

    #[test]
    fn a_reloaded_tab_without_writes_takes_a_closed_tabs_unsent_writes_first() {
        let s = stored(&[("a", 3), ("b", 0), ("mine", 0)]);
        assert_eq!(
            ids(&s, adoption_order(Some("mine"), &s, true)),
            vec!["a", "mine"]
        );
        // Live tabs not told from closed ones: its own only.
        assert_eq!(
            ids(&s, adoption_order(Some("mine"), &s, false)),
            vec!["mine"]
        );
        // Nothing stored for it (or an empty `previous`, a page after one kept in the
        // back/forward cache): unsent writes, never another's empty outbox; else a fresh id.
        assert_eq!(ids(&s, adoption_order(Some("gone"), &s, true)), vec!["a"]);
        assert!(adoption_order(Some(""), &stored(&[("b", 0)]), true).is_empty());
    }

    #[test]
    fn a_wipe_keeping_what_waits_keeps_every_outbox_and_moves_none() {
        let write = Mutation {
            id: 1,
            collection: "likes".into(),
            key: "e1".into(),
            value: Some("{}".into()),
            updated_at: 5,
            fields: None,
        };
        let outboxes: BTreeMap<String, (u64, Vec<Mutation>)> = [
            ("empty".to_owned(), (4, vec![])),
            ("writes".to_owned(), (2, vec![write.clone()])),
        ]
        .into();
        // A sign-out, a sign-in, or a tab following either: every outbox stays as it is (one
        // read as empty may hold writes another tab stored since); none moves.
        assert_eq!(kept_by_wipe(outboxes.clone(), true), outboxes);
        // Of them, those that hold writes are handed over to be taken.
        assert_eq!(parked(&outboxes), vec![("writes".to_owned(), vec![write])]);
        // Discarded: none.
        assert!(kept_by_wipe(outboxes, false).is_empty());
    }

    #[test]
    fn a_new_tab_takes_unsent_writes_first_then_an_empty_outbox() {
        let s = stored(&[("e1", 0), ("w1", 2), ("e2", 0), ("w2", 1)]);
        assert_eq!(
            ids(&s, adoption_order(None, &s, true)),
            vec!["w1", "w2", "e1", "e2"]
        );
    }

    #[test]
    fn nothing_is_taken_over_when_live_tabs_cannot_be_told_from_closed_ones() {
        let s = stored(&[("w1", 2), ("e1", 0)]);
        assert!(adoption_order(None, &s, false).is_empty());
        assert!(adoption_order(None, &[], true).is_empty());
    }
}
