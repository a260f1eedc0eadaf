// Keeps V8's young generation at the size it starts with (two 1 MiB semi-spaces) for the
// effect-nbd command. Left alone, V8 grows it to two 16 MiB semi-spaces under a steady
// stream of short-lived objects (request headers, replies, fibers), which at gigabytes a
// second is soon: about 30 MiB more resident memory for no measured gain (1 MiB writes,
// 4 KiB random I/O, with and without filters). The growth factor is read each time V8
// would grow the space, so setting it here, before the server allocates, is enough. A
// young generation sized by the user (NODE_OPTIONS or node's own flags) is kept.
"use strict"
const sized = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? "").split(/\s+/)].some((flag) =>
  /^--(max-)?semi-space/.test(flag.replaceAll("_", "-")) // --semi-space-growth-factor too
)
if (!sized) require("node:v8").setFlagsFromString("--semi-space-growth-factor=1")
