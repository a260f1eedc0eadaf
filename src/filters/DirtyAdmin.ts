/**
 * The `dirty` filter's admin endpoint: its {@link DirtyControl} on a Unix socket, for
 * control from outside the process (`control=PATH`). One command per line, one JSON
 * reply per line, in order:
 *
 * - `list` → `{"ok":true,"bitmaps":[{"name","active","granularity","dirtyBytes","inconsistent"},...]}`
 * - `checkpoint NAME` → `{"ok":true,"bitmap":{...}}` (the frozen bitmap)
 * - `remove NAME` → `{"ok":true}`
 * - a failure → `{"ok":false,"reason":"Exists","message":"..."}`
 *
 * For example `echo 'checkpoint daily-1' | nc -U /run/disk.dirty.sock`. Anyone who can
 * open the socket controls the bitmaps: it is created with mode 0600.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as net from "node:net"
import { DirtyError } from "./DirtyState.ts"
import type { DirtyControl } from "./DirtyTracker.ts"

/** The reply to one command line. */
export const command = (control: DirtyControl, line: string): Effect.Effect<unknown> => {
  const [verb = "", ...rest] = line.trim().split(/\s+/)
  const name = rest.join(" ")
  const run: Effect.Effect<unknown, DirtyError> = verb === "list" && rest.length === 0
    ? Effect.map(control.list, (bitmaps) => ({ ok: true, bitmaps }))
    : verb === "checkpoint" && rest.length === 1
    ? Effect.map(control.checkpoint(name), (bitmap) => ({ ok: true, bitmap }))
    : verb === "remove" && rest.length === 1
    ? Effect.as(control.remove(name), { ok: true })
    : Effect.fail(new DirtyError({ reason: "BadCommand", message: `unknown command '${line.trim()}'` }))
  return Effect.catchAll(run, (e) => Effect.succeed({ ok: false, reason: e.reason, message: e.message }))
}

/** Removes a stale socket left by an earlier run (only a socket: never another kind of file). */
const removeStale = (path: string) => {
  try {
    if (fs.statSync(path).isSocket()) fs.unlinkSync(path)
  } catch {
    // absent: nothing to remove
  }
}

/** Serves `control` on a Unix socket at `path` for the life of the scope. */
export const serve = (control: DirtyControl, path: string): Effect.Effect<void, DirtyError, Scope.Scope> =>
  Effect.gen(function*() {
    const runtime = yield* Effect.runtime<never>()
    const sockets = new Set<net.Socket>()
    const server = net.createServer((socket) => {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
      socket.on("error", () => socket.destroy())
      let buffered = ""
      let queue = Promise.resolve()
      socket.on("data", (chunk) => {
        buffered += chunk.toString("utf8")
        if (buffered.length > 65536) return socket.destroy()
        const lines = buffered.split("\n")
        buffered = lines.pop()!
        for (const line of lines.filter((l) => l.trim() !== "")) {
          queue = queue.then(async () => {
            const reply = await Runtime.runPromise(runtime)(command(control, line))
            if (!socket.destroyed) socket.write(`${JSON.stringify(reply)}\n`)
          })
        }
      })
    })
    yield* Effect.acquireRelease(
      Effect.async<void, DirtyError>((resume) => {
        removeStale(path)
        server.once("error", (cause) =>
          resume(Effect.fail(new DirtyError({ reason: "Control", message: `dirty: cannot listen on ${path}: ${cause}` }))))
        server.listen(path, () => {
          fs.chmodSync(path, 0o600)
          resume(Effect.void)
        })
      }),
      () =>
        Effect.async<void>((resume) => {
          for (const socket of sockets) socket.destroy()
          server.close(() => resume(Effect.void))
        })
    )
  })
