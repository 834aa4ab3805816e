// Sinkron for the browser: the sync engine (Rust, WebAssembly), its driver, and Zustand stores of
// the app's declared collections (or the ready-made preset).
export { SinkronClient, SinkronError, subject, type ClientOptions, type TokenProvider } from "./driver.js";
export {
  collection,
  createSyncStore,
  createUserSyncStore,
  defineCollections,
  presetCollections,
  userSync,
  syncState,
  type Collection,
  type Collections,
  type HistoryEntry,
  type StoreOptions,
  type SyncState,
  type SyncStore,
  type UserSyncState,
  type ValueOf,
} from "./store.js";
export type { Change, Changed, Json, LegacyRecord, Rec, Session, Snapshot, Status, User, Value } from "./types.js";
