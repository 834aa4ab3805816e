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

/// What a driver hands [`crate::Engine::unpark`] for a `Command::Unpark`: of a scope's stored
/// outboxes (client id → next id and writes), those that hold writes. For drivers that keep
/// the outboxes in a map (the native client, the simulation).
pub fn parked(outboxes: &BTreeMap<String, (u64, Vec<Mutation>)>) -> Vec<(String, Vec<Mutation>)> {
    outboxes
        .iter()
        .filter(|(_, (_, mutations))| !mutations.is_empty())
        .map(|(client_id, (_, mutations))| (client_id.clone(), mutations.clone()))
        .collect()
}

/// How eagerly a starting tab takes over one stored outbox: `None` never, else lower first
/// (ties in the order the driver found them).
///
/// - `previous_known`: the tab had a client id before it was reloaded or restored (kept in
///   `sessionStorage`); `is_previous`: this outbox is that id's. Then only that one is a
///   candidate: a reloaded tab resumes its own outbox and numbering, never another tab's.
/// - Otherwise, when the driver can tell a closed tab from a live one (`owners_known`: Web
///   Locks), outboxes with `pending` writes first (they must be sent), then the empty ones
///   (to reuse an id with its numbering).
/// - Otherwise never: a live tab's outbox must not be taken over.
///
/// Only stored outboxes are ranked: an id with nothing stored is never taken over, since
/// without its numbering the tab must keep its fresh id.
fn adoption_rank(
    is_previous: bool,
    pending: usize,
    previous_known: bool,
    owners_known: bool,
) -> Option<u8> {
    if previous_known {
        return is_previous.then_some(0);
    }
    owners_known.then_some(if pending > 0 { 0 } else { 1 })
}

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
    for wanted in 0..=1 {
        // Positions by `enumerate`, not indexing: no bounds-check panic in the browser build.
        for (i, s) in stored.iter().enumerate() {
            if rank(s) == Some(wanted) {
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
    fn a_reloaded_tab_resumes_only_its_own_outbox() {
        let s = stored(&[("a", 3), ("b", 0), ("mine", 0)]);
        assert_eq!(
            ids(&s, adoption_order(Some("mine"), &s, true)),
            vec!["mine"]
        );
        assert_eq!(
            ids(&s, adoption_order(Some("mine"), &s, false)),
            vec!["mine"]
        );
        // Nothing stored for it: a fresh id, not someone else's outbox.
        assert!(adoption_order(Some("gone"), &s, true).is_empty());
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
