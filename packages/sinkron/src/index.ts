// Sinkron for the browser: the sync engine (Rust, WebAssembly), its driver, and a Zustand store.
export { SinkronClient, SinkronError, subject, type ClientOptions, type TokenProvider } from "./driver.js";
export { createUserSyncStore, userSync, syncState, type HistoryEntry, type SyncState, type UserSyncState } from "./store.js";
export type { Changed, Json, LegacyRecord, Rec, Session, Status, User, Value } from "./types.js";
