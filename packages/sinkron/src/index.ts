// Sinkron for the browser: the sync engine (Rust, WebAssembly), its driver, and a Zustand store.
export { SinkronClient, SinkronError, type ClientOptions } from "./driver.js";
export { createUserSyncStore, userSync, syncState, type HistoryEntry, type SyncState, type UserSyncState } from "./store.js";
export type { Changed, Json, Rec, Session, Status, User, Value } from "./types.js";
