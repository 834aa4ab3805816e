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
    // The demo, and a page of an app with collections of its own (`custom.html`).
    rollupOptions: { input: { main: "index.html", custom: "custom.html" } },
  },
  server: { proxy: { "/api": "http://127.0.0.1:8080" } },
});
