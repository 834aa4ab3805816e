// Loads the engine's WebAssembly module (`crates/sinkron-wasm`) and calls it.
//
// The module takes one JSON text per call and answers with one, so it needs no generated
// glue: it exports its memory and four functions, and this file copies a call's UTF-8
// bytes in and the answer's out. What the texts mean is `Call` and `Answer` in types.ts.

/** Where the engine's module comes from: a URL, a fetched `Response`, its bytes or a compiled module. */
export type WasmSource = string | URL | Request | Response | BufferSource | WebAssembly.Module;

interface Exports {
  memory: WebAssembly.Memory;
  sinkron_new(): number;
  sinkron_free(engine: number): void;
  sinkron_buffer(len: number): number;
  sinkron_call(engine: number, buffer: number, len: number, inputLen: number): number;
  sinkron_answer_len(engine: number): number;
}

let loaded: Promise<Exports> | null = null;

/** Compiles the module once per page (later sources are ignored). */
function load(source: WasmSource = new URL("./wasm/sinkron.wasm", import.meta.url)): Promise<Exports> {
  loaded ??= (async () => {
    let module = source;
    if (typeof module === "string" || module instanceof URL || module instanceof Request) module = await fetch(module);
    if (module instanceof Response) {
      if (!module.ok) throw new Error(`sinkron: the engine's module could not be loaded (HTTP ${module.status})`);
      module = await module.arrayBuffer();
    }
    const result = await WebAssembly.instantiate(module as BufferSource, {});
    const instance: WebAssembly.Instance = "instance" in result ? result.instance : result;
    return instance.exports as unknown as Exports;
  })();
  return loaded;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
// The module's memory of engines nobody can call any more (their client was collected).
const collected = new FinalizationRegistry<() => void>((free) => free());

/** One tab's engine in the module. */
export class Engine {
  // ES `#` names, which a minifier shortens.
  readonly #handle: number;
  readonly #x: Exports;

  private constructor(x: Exports) {
    const handle = x.sinkron_new();
    this.#x = x;
    this.#handle = handle;
    collected.register(this, () => x.sinkron_free(handle));
  }

  static async create(source?: WasmSource): Promise<Engine> {
    return new Engine(await load(source));
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
    const answer = x.sinkron_call(this.#handle, buffer, len, head.length);
    // The call may have grown the memory: look at it anew.
    return decoder.decode(new Uint8Array(x.memory.buffer, answer, x.sinkron_answer_len(this.#handle)));
  }
}
