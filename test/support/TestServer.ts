/**
 * Starts a real effect-nbd server on 127.0.0.1 (port 0) for tests that talk to it over
 * a socket, and stops it afterwards.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Scope from "effect/Scope"
import type { NbdDriverShape } from "../../src/Driver.ts"
import * as MemoryDriver from "../../src/drivers/Memory.ts"
import * as Export from "../../src/Export.ts"
import * as Server from "../../src/server/Server.ts"
import type { ServerConfig } from "../../src/server/ServerConfig.ts"

/** A server started for a test. */
export interface TestServer {
  readonly port: number
  /** `nbd://127.0.0.1:PORT/NAME` */
  readonly uri: (exportName?: string) => string
  /** The memory store behind the default export, when it is a memory export. */
  readonly store: MemoryDriver.SparseMemory | undefined
  readonly stop: () => Promise<void>
}

/** Options of {@link start}. */
export interface StartOptions {
  /** Size of the default memory export (default 256 MiB). */
  readonly size?: number
  /** Exports to serve instead of one memory export. */
  readonly exports?: ReadonlyArray<Export.NbdExport>
  readonly readOnly?: boolean
  readonly config?: Partial<ServerConfig>
}

/** Starts a server; call `stop` when done. */
export const start = async (options: StartOptions = {}): Promise<TestServer> => {
  let store: MemoryDriver.SparseMemory | undefined
  let exports = options.exports
  if (exports === undefined) {
    store = new MemoryDriver.SparseMemory(options.size ?? 256 * 1024 * 1024)
    const driver: NbdDriverShape = MemoryDriver.fromStore(store, "test export")
    exports = [Export.make(driver, { readOnly: options.readOnly ?? false })]
  }
  const layer = Server.layer({ host: "127.0.0.1", port: 0 }, options.config).pipe(
    Layer.provide(Export.ExportRegistry.layer(exports))
  )
  const scope = Effect.runSync(Scope.make())
  const server = await Effect.runPromise(
    Layer.buildWithScope(layer, scope).pipe(
      Effect.map((ctx) => ctx.unsafeMap.get(Server.NbdServer.key) as Server.NbdServer["Type"]),
      Logger.withMinimumLogLevel(process.env.NBD_TEST_LOG ? LogLevel.Debug : LogLevel.None)
    )
  )
  const address = server.address
  if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
  return {
    port: address.port,
    uri: (name = "") => `nbd://127.0.0.1:${address.port}/${name}`,
    store,
    stop: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}
