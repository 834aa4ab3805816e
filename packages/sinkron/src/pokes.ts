// The reader of the server's poke stream (`--poke sse`, the client's `pokes`). A module of its
// own, imported when a stream first opens: a page that only polls never loads it.

/**
 * Reads the poke stream at `url` (sent with `authorization`, if any, and the cookies of a
 * `cookie` client) until it ends, fails or `stream` is aborted, handing each poke's version
 * to `poke`; answers the response's status (0 when none came).
 */
export async function readPokes(
  url: string,
  authorization: string | undefined,
  cookie: boolean | undefined,
  stream: AbortController,
  poke: (fields: { version: number }) => void,
): Promise<number> {
  let status = 0;
  try {
    const headers: Record<string, string> = authorization ? { authorization } : {};
    const credentials: RequestCredentials = cookie ? "include" : "same-origin";
    const response = await fetch(url, { headers, credentials, cache: "no-store", signal: stream.signal });
    status = response.status;
    if (response.ok && response.body) {
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let text = "";
      let silent: ReturnType<typeof setTimeout> | undefined;
      for (;;) {
        // The server writes at least every 25 s: a stream silent for a minute died on the way
        // (a mobile link or a NAT dropped it without a word) and is given up as ended.
        clearTimeout(silent);
        silent = setTimeout(() => stream.abort(), 60_000);
        const { done, value } = await reader.read();
        if (done) break;
        const lines = (text + value).split("\n");
        text = lines.pop()!;
        for (const line of lines) if (line.startsWith("data:")) poke({ version: +line.slice(5) });
      }
    }
  } catch {
    // Cut off, or closed by the engine (then not reported).
  }
  return status;
}
