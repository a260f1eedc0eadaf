#!/usr/bin/env node
// The effect-nbd command: sizes the thread pool (./thread-pool.cjs) and keeps V8's young
// generation small (./young-generation.cjs), then runs the command bundled in
// dist/command/ (built by `npm run build`, which `npm install` runs in a clone; a packed
// or installed package ships dist/ built).
"use strict"
require("./thread-pool.cjs")
require("./young-generation.cjs")
import("../dist/command/main.js").catch((error) => {
  console.error(error)
  process.exitCode = 1
})
