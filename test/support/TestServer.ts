/**
 * Starts a real effect-nbd server on 127.0.0.1 (port 0) for tests that talk to it over
 * a socket, and stops it afterwards.
 *
 * Suites that should hold on a filtered export too loop over {@link stackModes}: the
 * plain memory export, and the same export under `--filter cow --filter cache` (cow
 * nearest the client). `NBD_TEST_STACK=plain` or `NBD_TEST_STACK=stacked` runs only one
 * of them (default: both).
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Scope from "effect/Scope"
import * as net from "node:net"
import * as Catalog from "../../src/Catalog.ts"
import * as Client from "../../src/client/NbdClient.ts"
import * as Driver from "../../src/Driver.ts"
import type { Extent, NbdDriverShape } from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import { TransmissionFlags } from "../../src/protocol/Constants.ts"
import * as Server from "../../src/server/Server.ts"
import type { ServerConfig } from "../../src/server/ServerConfig.ts"

/** A server started for a test. */
export interface TestServer {
  readonly port: number
  /** `nbd://127.0.0.1:PORT/NAME` */
  readonly uri: (exportName?: string) => string
  /**
   * The memory store behind the default export, when it is a memory export. With a
   * `stack`, it is the bottom of the stack: what a client writes through `cow` never
   * reaches it.
   */
  readonly store: MemoryDriver.SparseMemory | undefined
  /** The filter specs stacked on the exports (empty when none). */
  readonly stack: ReadonlyArray<string>
  /** Reads bytes as a client of the export sees them (over a connection of its own). */
  readonly read: (offset: number, length: number, exportName?: string) => Promise<Uint8Array>
  /** Writes bytes as a client of the export (over a connection of its own; flushed). */
  readonly write: (offset: number, data: Uint8Array, exportName?: string) => Promise<void>
  /**
   * `base:allocation` of `[offset, offset + length)` as a client sees it, asking again
   * until the range is covered; the last extent is clipped to the range.
   */
  readonly blockStatus: (offset: number, length: number, exportName?: string) => Promise<ReadonlyArray<Extent>>
  readonly stop: () => Promise<void>
}

/** A driver to serve under the stack, with the options of its export (read-only goes on top of the stack). */
export type DriverExport = Export.ExportOptions & { readonly driver: NbdDriverShape }

/** Options of {@link start}. */
export interface StartOptions {
  /** Size of the default memory export (default 256 MiB). */
  readonly size?: number
  /** Exports to serve instead of one memory export (taken as they are: no `stack`). */
  readonly exports?: ReadonlyArray<Export.NbdExport>
  /** Drivers to serve instead of one memory export, each under the `stack`. */
  readonly drivers?: ReadonlyArray<DriverExport>
  readonly readOnly?: boolean
  /**
   * Filter specs (`NAME` or `NAME:KEY=VALUE,...`, as the command line's `--filter`, the
   * first nearest the client) stacked on the default memory export or on each of
   * `drivers`, below read-only. Filters live as long as the server.
   */
  readonly stack?: ReadonlyArray<string>
  readonly config?: Partial<ServerConfig>
}

/** One way to serve the memory export in a suite that runs in several. */
export interface StackMode {
  /** For test names. */
  readonly name: string
  /** Filter specs over the memory export (see {@link StartOptions.stack}). */
  readonly stack: ReadonlyArray<string>
}

/** The plain memory export. */
export const PLAIN: StackMode = { name: "plain memory", stack: [] }

/** The memory export under `--filter cow --filter cache`: cow nearest the client, then cache. */
export const STACKED: StackMode = { name: "memory under cow and cache", stack: ["cow", "cache"] }

/** Whether a mode has filters (with cow on top, the memory store below is never written). */
export const isStacked = (mode: StackMode): boolean => mode.stack.length > 0

const modesFromEnv = (value: string | undefined): ReadonlyArray<StackMode> => {
  switch (value ?? "both") {
    case "":
    case "both":
      return [PLAIN, STACKED]
    case "plain":
      return [PLAIN]
    case "stacked":
      return [STACKED]
    default:
      throw new Error(`NBD_TEST_STACK must be plain, stacked or both, not '${value}'`)
  }
}

/** The modes suites run in: both, or the one `NBD_TEST_STACK` (plain|stacked|both) names. */
export const stackModes: ReadonlyArray<StackMode> = modesFromEnv(process.env.NBD_TEST_STACK)

const filtersOf = (specs: ReadonlyArray<string>) =>
  specs.map((spec) => {
    const made = Catalog.filter(spec)
    if (Either.isLeft(made)) throw new Error(`bad filter spec '${spec}': ${made.left.message}`)
    return made.right
  })

/** Largest request of the helper client. */
const CHUNK = 4 * 1024 * 1024

/** Runs `f` with a client connected to the export, in a scope of its own. */
const withClient = <A>(
  port: number,
  exportName: string,
  f: (client: Client.NbdClient) => Effect.Effect<A, unknown>
): Promise<A> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function*() {
        const client = yield* Client.connect(net.connect(port, "127.0.0.1"), {
          exportName,
          metaContexts: ["base:allocation"]
        })
        const result = yield* f(client)
        yield* client.disconnect
        return result
      })
    )
  )

/** Starts a server; call `stop` when done. */
export const start = async (options: StartOptions = {}): Promise<TestServer> => {
  const stack = options.stack ?? []
  if (stack.length > 0 && options.exports !== undefined) {
    throw new Error("TestServer: `stack` applies to `drivers` or the default memory export, not to built `exports`")
  }
  const filters = filtersOf(stack)
  const scope = Effect.runSync(Scope.make())
  let store: MemoryDriver.SparseMemory | undefined
  let exports = options.exports
  try {
    if (exports === undefined) {
      let drivers = options.drivers
      if (drivers === undefined) {
        store = new MemoryDriver.SparseMemory(options.size ?? 256 * 1024 * 1024)
        drivers = [{ driver: MemoryDriver.fromStore(store, "test export"), readOnly: options.readOnly ?? false }]
      }
      exports = await Effect.runPromise(
        Scope.extend(
          Effect.forEach(drivers, ({ driver, ...exportOptions }) =>
            Effect.map(Driver.stack(driver, filters), (stacked) => Export.make(stacked, exportOptions))),
          scope
        )
      )
    }
    const layer = Server.layer({ host: "127.0.0.1", port: 0 }, options.config).pipe(
      Layer.provide(Export.ExportRegistry.layer(exports))
    )
    const server = await Effect.runPromise(
      Layer.buildWithScope(layer, scope).pipe(
        Effect.map((ctx) => ctx.unsafeMap.get(Server.NbdServer.key) as Server.NbdServer["Type"]),
        Logger.withMinimumLogLevel(process.env.NBD_TEST_LOG ? LogLevel.Debug : LogLevel.None)
      )
    )
    const address = server.address
    if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
    const port = address.port
    return {
      port,
      uri: (name = "") => `nbd://127.0.0.1:${port}/${name}`,
      store,
      stack,
      read: (offset, length, exportName = "") =>
        withClient(port, exportName, (client) =>
          Effect.gen(function*() {
            const out = new Uint8Array(length)
            for (let done = 0; done < length; done += CHUNK) {
              out.set(yield* client.read(offset + done, Math.min(CHUNK, length - done)), done)
            }
            return out
          })),
      write: (offset, data, exportName = "") =>
        withClient(port, exportName, (client) =>
          Effect.gen(function*() {
            for (let done = 0; done < data.length; done += CHUNK) {
              yield* client.write(offset + done, data.subarray(done, Math.min(done + CHUNK, data.length)))
            }
            if ((client.info.transmissionFlags & TransmissionFlags.SEND_FLUSH) !== 0) yield* client.flush
          })),
      blockStatus: (offset, length, exportName = "") =>
        withClient(port, exportName, (client) =>
          Effect.gen(function*() {
            const out: Array<{ length: number; flags: number }> = []
            let at = offset
            while (at < offset + length) {
              const replies = yield* client.blockStatus(at, Math.min(offset + length - at, 0x7fff_f000))
              const extents = replies[0]?.extents ?? []
              if (extents.length === 0) return yield* Effect.fail(new Error(`no extents at ${at}`))
              for (const extent of extents) {
                const n = Math.min(extent.length, offset + length - at)
                if (n <= 0) break
                const last = out[out.length - 1]
                if (last !== undefined && last.flags === extent.flags) last.length += n
                else out.push({ length: n, flags: extent.flags })
                at += n
              }
            }
            return out
          })),
      stop: () => Effect.runPromise(Scope.close(scope, Exit.void))
    }
  } catch (error) {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    throw error
  }
}
