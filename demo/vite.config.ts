import { defineConfig } from "vite";
import { fileURLToPath } from "node:url";

const pkg = (path: string) => fileURLToPath(new URL(`../packages/sinkron/src/${path}`, import.meta.url));

// The demo imports the package from source, so one `vite build` includes the latest driver.
export default defineConfig({
  resolve: {
    alias: [
      { find: /^sinkron\/react$/, replacement: pkg("react.ts") },
      { find: /^sinkron$/, replacement: pkg("index.ts") },
    ],
  },
  esbuild: { jsx: "automatic" },
  build: {
    target: "es2022",
    sourcemap: false,
    reportCompressedSize: false,
    // The demo, a page of an app with collections of its own (`custom.html`) and a
    // server-rendered page (`ssr.html`; its server side is built by `vite build --ssr`).
    rollupOptions: { input: { main: "index.html", custom: "custom.html", ssr: "ssr.html" } },
  },
  server: { proxy: { "/api": "http://127.0.0.1:8080" } },
});
