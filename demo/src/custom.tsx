// A page of an app with collections of its own: bookmarks, declared with their value type.
// The store's `records.bookmarks` and `put("bookmarks", …)` are typed from the declaration.
// The server must know the collection: `sinkron serve --collections
// history,favorites,likes,settings,bookmarks`; with `--merge-fields bookmarks` it merges a
// bookmark field by field, so a note edited on one device and "read" marked on another both
// survive (each write names the fields it sets); with `--merge-fields bookmarks:read`, once
// read it stays read, and `read` is declared sticky here so that a "read" queued offline and
// un-marked before it was sent still reaches the server.
import { useState } from "react";
import { createRoot } from "react-dom/client";
import { useStore } from "zustand";
import { collection, createSyncStore, defineCollections } from "sinkron";
import { useSyncStore } from "sinkron/react";
import "./styles.css";

const collections = defineCollections({
  bookmarks: collection<{ url: string; note: string; read?: boolean }>({ sticky: ["read"] }),
});
const store = createSyncStore(collections);
/** `?interval=MS` and `?requestTimeout=MS`, as on the demo's main page (for tests). */
const params = new URLSearchParams(location.search);

function Bookmarks() {
  const status = useSyncStore(store, { interval: Number(params.get("interval") ?? 30000), requestTimeout: Number(params.get("requestTimeout")) || undefined });
  const user = useStore(store, (s) => s.user);
  const bookmarks = useStore(store, (s) => s.records.bookmarks);
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [url, setUrl] = useState("");
  const [note, setNote] = useState("");
  const { signIn, signOut, put, remove } = store.getState();
  return (
    <main className="custom">
      <h1>Bookmarks</h1>
      <p data-testid="sync-status" data-state={status.state} data-pending={status.pending} data-error={status.error ?? ""}>
        {user ? `${user.username}: ${status.state}` : "guest"}
        {status.error ? ` (${status.error})` : ""}
      </p>
      {user ? (
        <button data-testid="logout" onClick={() => void signOut()}>
          Sign out
        </button>
      ) : (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            const create = (e.nativeEvent as SubmitEvent).submitter?.dataset.testid === "signup-submit";
            void signIn(name, password, { create });
          }}
        >
          <input data-testid="login-username" value={name} onChange={(e) => setName(e.target.value)} placeholder="username" />
          <input data-testid="login-password" type="password" value={password} onChange={(e) => setPassword(e.target.value)} placeholder="password" />
          <button data-testid="signup-submit">Sign up</button>
          <button data-testid="login-submit">Sign in</button>
        </form>
      )}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          // A bookmark already here: only its note changes.
          const known = bookmarks[url]?.value;
          if (known) put("bookmarks", url, { ...known, note }, ["note"]);
          else put("bookmarks", url, { url, note });
          setUrl("");
          setNote("");
        }}
      >
        <input data-testid="url" value={url} onChange={(e) => setUrl(e.target.value)} placeholder="address" />
        <input data-testid="note" value={note} onChange={(e) => setNote(e.target.value)} placeholder="note" />
        <button data-testid="add">Add</button>
      </form>
      <ul>
        {Object.values(bookmarks)
          .sort((a, b) => b.updatedAt - a.updatedAt)
          .map((b) => (
            <li key={b.key} data-testid="bookmark" data-url={b.value.url} data-note={b.value.note} data-read={String(!!b.value.read)}>
              {b.value.url} — {b.value.note}{" "}
              <button data-testid="read" onClick={() => put("bookmarks", b.key, { ...b.value, read: !b.value.read }, ["read"])}>
                {b.value.read ? "unread" : "read"}
              </button>{" "}
              <button onClick={() => remove("bookmarks", b.key)}>remove</button>
            </li>
          ))}
      </ul>
    </main>
  );
}

createRoot(document.getElementById("root")!).render(<Bookmarks />);
