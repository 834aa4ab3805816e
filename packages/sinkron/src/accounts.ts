// Sinkron's own accounts (`signIn`): a module of its own, imported at the first sign-in, so a
// page that never signs in (a guest's, or a site's with its own sign-in) never loads it.

import { SinkronError } from "./driver.js";
import type { Session } from "./types.js";

/** Signs `username` in (or up, with `create`) at the server at `baseUrl`: the new session. */
export async function requestSession(baseUrl: string, username: string, password: string, create: boolean, signal: AbortSignal | undefined): Promise<Session> {
  const response = await fetch(`${baseUrl}/api/auth/${create ? "register" : "login"}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password }),
    signal,
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body?.error ?? { code: "http_" + response.status, message: response.statusText };
    throw new SinkronError(error.code, error.message);
  }
  return body as Session;
}
