// Sizes libuv's thread pool for effect-nbd before anything uses it. The pool runs the
// file driver's reads and writes that miss the page cache (and fs calls, crypto and DNS
// lookups); libuv starts it once, on first use, with UV_THREADPOOL_SIZE threads (4 when
// unset). An ES module entry point is itself loaded through the pool, so the size has to
// be set in CommonJS code that runs first: this file, required by bin/effect-nbd.cjs or
// preloaded with `node --require ./bin/thread-pool.cjs`. A size set by the user is kept.
"use strict"
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = "16"
