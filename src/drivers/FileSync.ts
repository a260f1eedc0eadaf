/**
 * `fdatasync` for the file driver on a worker thread of its own instead of libuv's thread
 * pool. The pool (4 threads unless `UV_THREADPOOL_SIZE` is set before it starts, which
 * an ES module entry point is too late for; the command sets 16 in `bin/thread-pool.cjs`)
 * also runs every read and write: a few flushes of much dirty data would otherwise occupy
 * all of it and stall unrelated cached reads for as long as the disk takes.
 *
 * Flushes of one descriptor are grouped: while one `fdatasync` runs, the flushes that
 * arrive wait for the next, which starts when it ends and answers all of them (it
 * covers every write acknowledged before any of them arrived). Where no worker can be
 * started, Node's `fs.fdatasync` on the pool is used.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as fs from "node:fs"
import { Worker } from "node:worker_threads"
import type { ProtocolError } from "../Errors.ts"
import { systemFailure } from "./FileIo.ts"

const WORKER_SOURCE = `
const { parentPort } = require("node:worker_threads")
const fs = require("node:fs")
parentPort.on("message", ({ id, fd }) => {
  try {
    fs.fdatasyncSync(fd)
    parentPort.postMessage({ id })
  } catch (error) {
    parentPort.postMessage({ id, code: error.code, message: error.message })
  }
})
`

type Result = NodeJS.ErrnoException | null
type Waiter = (error: Result) => void

interface Reply {
  readonly id: number
  readonly code?: string
  readonly message?: string
}

let worker: Worker | undefined | null
let nextId = 0
const pending = new Map<number, Waiter>()

/** The shared worker, started on first use (`null` where it cannot start). */
const theWorker = (): Worker | null => {
  if (worker !== undefined) return worker
  try {
    const started = new Worker(WORKER_SOURCE, { eval: true })
    started.unref() // the server keeps the process alive, not its flushes
    started.on("message", (reply: Reply) => {
      const done = pending.get(reply.id)
      pending.delete(reply.id)
      done?.(reply.code === undefined ? null : Object.assign(new Error(reply.message), { code: reply.code }))
    })
    started.on("error", () => {
      worker = null // answer what was pending on the pool instead
      for (const [, done] of pending) done(Object.assign(new Error("the flush worker failed"), { code: "EIO" }))
      pending.clear()
    })
    worker = started
  } catch {
    worker = null
  }
  return worker
}

/** One `fdatasync` of `fd`, on the worker (or the pool). */
const syncOnce = (fd: number, done: Waiter): void => {
  const target = theWorker()
  if (target === null) return fs.fdatasync(fd, done)
  const id = nextId++
  pending.set(id, done)
  target.postMessage({ id, fd })
}

/** Makes the grouped flush of one descriptor. */
export const make = (fd: number): Effect.Effect<void, ProtocolError> => {
  let running = false
  let waiting: Array<Waiter> = []
  const start = () => {
    const batch = waiting
    waiting = []
    running = true
    syncOnce(fd, (error) => {
      running = false
      for (const done of batch) done(error)
      if (waiting.length > 0) start()
    })
  }
  return Effect.async<void, ProtocolError>((resume) => {
    waiting.push((error) => resume(error ? Effect.fail(systemFailure("flush")(error)) : Effect.void))
    if (!running) start()
  })
}
