//! The browser build of the sync engine: [`Sinkron`] wraps the core [`Engine`] for
//! JavaScript.
//!
//! Each method decodes plain values, calls the engine, and encodes what comes out; there is
//! no sync decision here. Inputs are strings and numbers (timestamps as `f64` milliseconds,
//! exact below 2^53). Lists (the changes of a reply or a tab message, a restored outbox) are
//! passed one item at a time with `stage_*` calls before the call that consumes them, which
//! keeps JSON parsing out of the module. Commands come out as JSON text ([`convert`]), record
//! values embedded raw. The TypeScript driver in `packages/sinkron` executes them.
//!
//! Size matters on mobile: no serde, no `f64` formatting, no `core::fmt`, and in the browser
//! no std at all (`alloc` only, a small allocator, a panic handler that just traps).

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod convert;

use alloc::string::String;
use alloc::vec::Vec;

/// A panic is a bug (inputs are decoded without panicking); trapping keeps std's panic
/// formatting out of the module.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
// SAFETY: WebAssembly in a page without threads runs this module on one thread only.
static ALLOCATOR: lol_alloc::AssumeSingleThreaded<lol_alloc::FreeListAllocator> =
    unsafe { lol_alloc::AssumeSingleThreaded::new(lol_alloc::FreeListAllocator::new()) };

use sinkron_core::engine::{Failure, Page, Reply, TabBody, TabMessage};
use sinkron_core::{Change, Config, Engine, Mutation, Record, RecordKey};
use wasm_bindgen::prelude::*;

/// One tab's sync engine.
#[wasm_bindgen]
pub struct Sinkron {
    engine: Engine,
    staged_changes: Vec<Change>,
    staged_mutations: Vec<Mutation>,
}

fn ms(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value as u64
    } else {
        0
    }
}

#[wasm_bindgen]
impl Sinkron {
    /// A guest engine. `interval_ms` is the pull interval (0 = the default 30 s);
    /// `pull_on_sign_in` pulls the account right after sign-in; `pull_on_focus` pulls when
    /// the window gets focus or the tab becomes visible again; the seed (two 32-bit halves
    /// from `crypto.getRandomValues`) picks the client id and the jitter.
    #[wasm_bindgen(constructor)]
    pub fn new(
        interval_ms: f64,
        pull_on_sign_in: bool,
        pull_on_focus: bool,
        seed_high: u32,
        seed_low: u32,
    ) -> Sinkron {
        let mut config = if interval_ms >= 1.0 {
            Config::with_interval(ms(interval_ms))
        } else {
            Config::default()
        };
        config.pull_on_sign_in = pull_on_sign_in;
        config.pull_on_focus = pull_on_focus;
        let seed = (u64::from(seed_high) << 32) | u64::from(seed_low);
        Sinkron {
            engine: Engine::new(config, seed),
            staged_changes: Vec::new(),
            staged_mutations: Vec::new(),
        }
    }

    // ----- getters -----

    #[wasm_bindgen(js_name = clientId)]
    pub fn client_id(&self) -> String {
        self.engine.client_id().into()
    }

    pub fn user(&self) -> Option<String> {
        self.engine.user().map(Into::into)
    }

    pub fn cursor(&self) -> Option<String> {
        self.engine.cursor().map(Into::into)
    }

    /// The status as JSON: `{"signedIn","online","visible","leader","pending","syncing",
    /// "lastSyncedAt","error"}`.
    pub fn status(&self) -> String {
        convert::status(&self.engine.status())
    }

    /// The live records of a collection as a JSON array of
    /// `{"key","value","updatedAt","clientId"}`.
    pub fn collection(&self, name: &str) -> String {
        convert::records(&self.engine.collection(name))
    }

    /// The next command as JSON, or `undefined` when there is none.
    #[wasm_bindgen(js_name = pollCommand)]
    pub fn poll_command(&mut self) -> Option<String> {
        self.engine.poll_command().map(|c| convert::command(&c))
    }

    /// When to call `handleTimeout` next (ms since the epoch), or -1 for never.
    #[wasm_bindgen(js_name = pollTimeout)]
    pub fn poll_timeout(&self) -> f64 {
        self.engine.poll_timeout().map_or(-1.0, |t| t as f64)
    }

    // ----- app commands -----

    /// Writes a record (`value`: JSON object text, or undefined to delete). Returns an error
    /// code when the write is refused, else undefined.
    pub fn write(
        &mut self,
        now: f64,
        collection: &str,
        key: &str,
        value: Option<String>,
    ) -> Option<String> {
        self.engine
            .write(ms(now), collection, key, value)
            .err()
            .map(|e| e.code().into())
    }

    #[wasm_bindgen(js_name = signIn)]
    pub fn sign_in(&mut self, now: f64, user: &str) {
        self.engine.sign_in(ms(now), user);
    }

    #[wasm_bindgen(js_name = signOut)]
    pub fn sign_out(&mut self, now: f64) {
        self.engine.sign_out(ms(now));
    }

    pub fn flush(&mut self, now: f64) {
        self.engine.flush(ms(now));
    }

    // ----- restore (before any event) -----

    #[wasm_bindgen(js_name = restoreUser)]
    pub fn restore_user(&mut self, user: Option<String>) {
        self.engine.restore_user(user);
    }

    #[wasm_bindgen(js_name = restoreCursor)]
    pub fn restore_cursor(&mut self, cursor: Option<String>) {
        self.engine.restore_cursor(cursor);
    }

    /// Restores the confirmed records staged with `stageChange`.
    #[wasm_bindgen(js_name = restoreRecords)]
    pub fn restore_records(&mut self) {
        for change in self.staged_changes.drain(..) {
            self.engine.restore_record(change);
        }
    }

    /// How eagerly to take over a stored outbox at start: the core's rule
    /// (`sinkron_core::adopt::adoption_rank`); -1 never, else lower first.
    #[wasm_bindgen(js_name = adoptionRank)]
    pub fn adoption_rank(
        is_previous: bool,
        pending: u32,
        previous_known: bool,
        owners_known: bool,
    ) -> i32 {
        sinkron_core::adopt::adoption_rank(
            is_previous,
            pending as usize,
            previous_known,
            owners_known,
        )
        .map_or(-1, i32::from)
    }

    /// Restores a stored outbox (the mutations staged with `stageMutation`) under its
    /// client id, with the numbering it was stored with (`next`).
    #[wasm_bindgen(js_name = restoreOutbox)]
    pub fn restore_outbox(&mut self, client_id: String, next_id: f64) {
        let mutations = core::mem::take(&mut self.staged_mutations);
        self.engine
            .restore_outbox(client_id, ms(next_id), mutations);
    }

    // ----- staging of lists -----

    #[wasm_bindgen(js_name = stageChange)]
    #[allow(clippy::too_many_arguments)]
    pub fn stage_change(
        &mut self,
        collection: String,
        key: String,
        value: Option<String>,
        updated_at: f64,
        client_id: String,
        version: f64,
    ) {
        self.staged_changes.push(Change {
            collection,
            key,
            value,
            updated_at: ms(updated_at),
            client_id,
            version: ms(version),
        });
    }

    #[wasm_bindgen(js_name = stageMutation)]
    pub fn stage_mutation(
        &mut self,
        id: f64,
        collection: String,
        key: String,
        value: Option<String>,
        updated_at: f64,
    ) {
        self.staged_mutations.push(Mutation {
            id: ms(id),
            collection,
            key,
            value,
            updated_at: ms(updated_at),
        });
    }

    // ----- events -----

    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self, now: f64) {
        self.engine.handle_timeout(ms(now));
    }

    #[wasm_bindgen(js_name = handleVisibility)]
    pub fn handle_visibility(&mut self, now: f64, visible: bool) {
        self.engine.handle_visibility(ms(now), visible);
    }

    #[wasm_bindgen(js_name = handleFocus)]
    pub fn handle_focus(&mut self, now: f64) {
        self.engine.handle_focus(ms(now));
    }

    #[wasm_bindgen(js_name = handleOnline)]
    pub fn handle_online(&mut self, now: f64, online: bool) {
        self.engine.handle_online(ms(now), online);
    }

    #[wasm_bindgen(js_name = handleLeadership)]
    pub fn handle_leadership(&mut self, now: f64, leader: bool) {
        self.engine.handle_leadership(ms(now), leader);
    }

    // ----- HTTP replies -----

    /// A 200 to a pull, with its changes staged.
    #[wasm_bindgen(js_name = replyPulled)]
    pub fn reply_pulled(
        &mut self,
        now: f64,
        id: f64,
        cursor: String,
        more: bool,
        reset: bool,
        server_time: f64,
    ) {
        let page = self.page(cursor, more, reset, server_time);
        self.engine
            .handle_reply(ms(now), ms(id), Reply::Pulled(page));
    }

    /// A 200 to a push, with its changes staged.
    #[wasm_bindgen(js_name = replyPushed)]
    #[allow(clippy::too_many_arguments)]
    pub fn reply_pushed(
        &mut self,
        now: f64,
        id: f64,
        ack: f64,
        cursor: String,
        more: bool,
        reset: bool,
        server_time: f64,
    ) {
        let page = self.page(cursor, more, reset, server_time);
        let reply = Reply::Pushed { ack: ms(ack), page };
        self.engine.handle_reply(ms(now), ms(id), reply);
    }

    #[wasm_bindgen(js_name = replyNotModified)]
    pub fn reply_not_modified(&mut self, now: f64, id: f64) {
        self.engine
            .handle_reply(ms(now), ms(id), Reply::NotModified);
    }

    /// A failed request: `status` 0 means no answer at all; `retry_after_ms` < 0 means
    /// none; `ack` is the error body's `ack` (a 409 `mutation_id_reused`), < 0 for none;
    /// `code` is the error body's `code`, if any.
    #[wasm_bindgen(js_name = replyFailed)]
    pub fn reply_failed(
        &mut self,
        now: f64,
        id: f64,
        status: u16,
        retry_after_ms: f64,
        ack: f64,
        code: Option<String>,
    ) {
        let retry_after_ms = (retry_after_ms >= 0.0).then(|| ms(retry_after_ms));
        let ack = (ack >= 0.0).then(|| ms(ack));
        let failure = Failure::from_status(status, retry_after_ms, ack, code.as_deref());
        self.engine
            .handle_reply(ms(now), ms(id), Reply::Failed(failure));
    }

    // ----- messages from other tabs -----

    #[wasm_bindgen(js_name = tabWrote)]
    #[allow(clippy::too_many_arguments)]
    pub fn tab_wrote(
        &mut self,
        now: f64,
        scope: Option<String>,
        id: f64,
        collection: String,
        key: String,
        value: Option<String>,
        updated_at: f64,
        client_id: String,
    ) {
        let body = TabBody::Wrote {
            id: ms(id),
            key: RecordKey { collection, key },
            record: Record {
                value,
                updated_at: ms(updated_at),
                client_id,
            },
        };
        self.tab(now, scope, body);
    }

    /// Server state another tab received, with its changes staged.
    #[wasm_bindgen(js_name = tabSynced)]
    pub fn tab_synced(
        &mut self,
        now: f64,
        scope: Option<String>,
        from: Option<String>,
        to: String,
        reset: bool,
    ) {
        let changes = core::mem::take(&mut self.staged_changes);
        let body = TabBody::Synced {
            from,
            to,
            reset,
            changes,
        };
        self.tab(now, scope, body);
    }

    #[wasm_bindgen(js_name = tabAcked)]
    pub fn tab_acked(&mut self, now: f64, scope: Option<String>, client_id: String, ack: f64) {
        let body = TabBody::Acked {
            client_id,
            ack: ms(ack),
        };
        self.tab(now, scope, body);
    }

    #[wasm_bindgen(js_name = tabPullWanted)]
    pub fn tab_pull_wanted(&mut self, now: f64, scope: Option<String>) {
        self.tab(now, scope, TabBody::PullWanted);
    }

    #[wasm_bindgen(js_name = tabSignedIn)]
    pub fn tab_signed_in(&mut self, now: f64, scope: Option<String>) {
        self.tab(now, scope, TabBody::SignedIn);
    }

    #[wasm_bindgen(js_name = tabSignedOut)]
    pub fn tab_signed_out(&mut self, now: f64, scope: Option<String>) {
        self.tab(now, scope, TabBody::SignedOut);
    }
}

impl Sinkron {
    fn page(&mut self, cursor: String, more: bool, reset: bool, server_time: f64) -> Page {
        Page {
            cursor,
            changes: core::mem::take(&mut self.staged_changes),
            more,
            reset,
            server_time: ms(server_time),
        }
    }

    fn tab(&mut self, now: f64, scope: Option<String>, body: TabBody) {
        self.engine
            .handle_tab_message(ms(now), TabMessage { scope, body });
    }
}
