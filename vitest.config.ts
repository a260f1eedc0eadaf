import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Memory-bound tests force a collection before measuring what is really held.
    poolOptions: { forks: { execArgv: ["--expose-gc"] } }
  }
})
