// Loads the engine's WebAssembly module (`crates/sinkron-wasm`) and calls it.
//
// The module takes one JSON text per call and answers with one, so it needs no generated
// glue: it exports its memory and three functions, and this file copies a call's UTF-8
// bytes in and the answer's out. What the texts mean is `Call` and `Answer` in types.ts.

/** Where the engine's module comes from: a URL, a fetched `Response`, its bytes or a compiled module. */
export type WasmSource = string | URL | Request | Response | BufferSource | WebAssembly.Module;

interface Exports {
  memory: WebAssembly.Memory;
  sinkron_buffer(len: number): number;
  sinkron_call(buffer: number, len: number, inputLen: number): number;
  sinkron_answer_len(): number;
}

let compiled: Promise<WebAssembly.Module> | null = null;

/** Compiles the module once per page (later sources are ignored), unless that failed: the next call tries again. */
function compile(source: WasmSource = new URL("./wasm/sinkron.wasm", import.meta.url)): Promise<WebAssembly.Module> {
  compiled ??= (async () => {
    let module = source;
    if (module instanceof WebAssembly.Module) return module;
    if (typeof module === "string" || module instanceof URL || module instanceof Request) module = await fetch(module);
    if (module instanceof Response) {
      if (!module.ok) throw new Error(`sinkron: the engine's module could not be loaded (HTTP ${module.status})`);
      module = await module.arrayBuffer();
    }
    return WebAssembly.compile(module as BufferSource);
  })().catch((e: unknown) => {
    compiled = null;
    throw e;
  });
  return compiled;
}

const encoder = new TextEncoder();
/** UTF-8 text from bytes: the engine's answers, and the driver's JWT payloads. */
export const decoder = new TextDecoder();

/**
 * One tab's engine: an instance of the module of its own, whose memory goes with it when
 * the client is collected.
 */
export class Engine {
  // An ES `#` name, which a minifier shortens.
  readonly #x: Exports;

  private constructor(x: Exports) {
    this.#x = x;
  }

  static async create(source?: WasmSource): Promise<Engine> {
    const instance = await WebAssembly.instantiate(await compile(source), {});
    return new Engine(instance.exports as unknown as Exports);
  }

  /** One call: its JSON text and, for a reply, the server's body; answers with JSON text. */
  call(input: string, body: string): string {
    const x = this.#x;
    const head = encoder.encode(input);
    const tail = encoder.encode(body);
    const len = head.length + tail.length;
    const buffer = x.sinkron_buffer(len);
    const bytes = new Uint8Array(x.memory.buffer, buffer, len);
    bytes.set(head);
    bytes.set(tail, head.length);
    const answer = x.sinkron_call(buffer, len, head.length);
    // The call may have grown the memory: look at it anew.
    return decoder.decode(new Uint8Array(x.memory.buffer, answer, x.sinkron_answer_len()));
  }
}
