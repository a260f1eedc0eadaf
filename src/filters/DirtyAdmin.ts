/**
 * The `dirty` filter's admin endpoint: its {@link DirtyControl} over HTTP on a Unix socket
 * (`control=PATH`), served by @effect/platform's HTTP server, for control from outside the
 * process. Replies are JSON:
 *
 * - `GET /bitmaps` → `{"ok":true,"bitmaps":[{"name","active","granularity","dirtyBytes","inconsistent"},...]}`
 * - `POST /bitmaps/NAME` → checkpoint: freezes the active bitmap as NAME, `{"ok":true,"bitmap":{...}}`
 * - `DELETE /bitmaps/NAME` → removes a frozen bitmap, `{"ok":true}`
 * - a failure → `{"ok":false,"reason":"Exists","message":"..."}` with status 400 (bad name,
 *   the active bitmap), 404 (no such bitmap), 409 (exists) or 500
 *
 * For example `curl --unix-socket /run/disk.dirty.sock -X POST http://localhost/bitmaps/daily-1`.
 * Anyone who can open the socket controls the bitmaps: it is created with mode 0600.
 *
 * @since 0.2.0
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as http from "node:http"
import { DirtyError } from "./DirtyState.ts"
import type { DirtyControl } from "./DirtyTracker.ts"

/** The HTTP status of a failure. */
const statusOf = (reason: DirtyError["reason"]): number => {
  switch (reason) {
    case "InvalidName":
    case "Active":
      return 400
    case "NotFound":
      return 404
    case "Exists":
      return 409
    default:
      return 500
  }
}

/** A JSON reply: the body on success, `{ ok: false, reason, message }` on failure. */
const reply = (effect: Effect.Effect<unknown, DirtyError>) =>
  Effect.match(effect, {
    onFailure: (e) =>
      HttpServerResponse.unsafeJson({ ok: false, reason: e.reason, message: e.message }, { status: statusOf(e.reason) }),
    onSuccess: (body) => HttpServerResponse.unsafeJson(body)
  })

/** The bitmap named in the path. */
const named = <A>(f: (name: string) => Effect.Effect<A, DirtyError>) =>
  Effect.flatMap(HttpRouter.params, (params) => reply(f(params.name ?? "")))

/** The routes of the endpoint. */
export const router = (control: DirtyControl) =>
  HttpRouter.empty.pipe(
    HttpRouter.get("/bitmaps", reply(Effect.map(control.list, (bitmaps) => ({ ok: true, bitmaps })))),
    HttpRouter.post("/bitmaps/:name", named((name) => Effect.map(control.checkpoint(name), (bitmap) => ({ ok: true, bitmap })))),
    HttpRouter.del("/bitmaps/:name", named((name) => Effect.as(control.remove(name), { ok: true })))
  )

/** Removes a stale socket left by an earlier run (only a socket: never another kind of file). */
const removeStale = (path: string) => {
  try {
    if (fs.statSync(path).isSocket()) fs.unlinkSync(path)
  } catch {
    // absent: nothing to remove
  }
}

/** Serves `control` over HTTP on a Unix socket at `path` for the life of the scope. */
export const serve = (control: DirtyControl, path: string): Effect.Effect<void, DirtyError, Scope.Scope> =>
  Effect.gen(function*() {
    removeStale(path)
    const server = HttpServer.serve(router(control)).pipe(
      Layer.provide(NodeHttpServer.layer(() => http.createServer(), { path }))
    )
    yield* Layer.build(server).pipe(
      Effect.mapError((cause) => new DirtyError({ reason: "Control", message: `dirty: cannot listen on ${path}: ${cause.message}` }))
    )
    yield* Effect.sync(() => fs.chmodSync(path, 0o600))
    yield* Effect.addFinalizer(() => Effect.sync(() => removeStale(path)))
  })
