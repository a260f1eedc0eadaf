/**
 * A server and a client connected in process, with no socket: the way to test a driver
 * or a filter stack end to end, deterministically (under `TestClock`, with seeded fault
 * injection), through the same negotiation and transmission code a real client meets.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import { Duplex } from "node:stream"
import * as NbdClient from "../client/NbdClient.ts"
import { NbdDriver } from "../Driver.ts"
import * as Export from "../Export.ts"
import * as ServerConfig from "../server/ServerConfig.ts"
import * as Session from "../server/Session.ts"
import * as Shutdown from "../server/Shutdown.ts"

/** One end of an in-memory pipe: what is written to it is read from its peer. */
class End extends Duplex {
  peer!: End
  private ended = false
  override _read() {}
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void) {
    this.peer.deliver(Buffer.from(chunk))
    callback()
  }
  override _final(callback: (error?: Error | null) => void) {
    this.peer.finishReading()
    callback()
  }
  override _destroy(error: Error | null, callback: (error?: Error | null) => void) {
    this.peer.finishReading()
    this.finishReading()
    callback(error)
  }
  deliver(chunk: Buffer) {
    if (!this.ended) this.push(chunk)
  }
  finishReading() {
    if (this.ended) return
    this.ended = true
    this.push(null)
  }
}

/** Two connected in-memory streams. */
export const duplexPair = (): readonly [Duplex, Duplex] => {
  const a = new End()
  const b = new End()
  a.peer = b
  b.peer = a
  return [a, b]
}

/** Options of an in-process connection. */
export interface ConnectOptions {
  /** Server settings (the defaults otherwise). */
  readonly server?: Partial<ServerConfig.ServerConfig> | undefined
  /** The server's shutdown signal (one that never triggers otherwise). */
  readonly shutdown?: Shutdown.Shutdown | undefined
  /** Identifies the connection in logs and to drivers. */
  readonly connectionId?: number | undefined
}

/**
 * Runs a server session on one end of a pair, in a fiber of the scope, and returns the
 * other end for a client. The exports come from the `ExportRegistry` in context.
 */
export const serve = (
  options: ConnectOptions = {}
): Effect.Effect<Duplex, never, Scope.Scope | Export.ExportRegistry> =>
  Effect.gen(function*() {
    const [client, server] = duplexPair()
    yield* Effect.forkScoped(Session.run(server, {
      config: ServerConfig.make(options.server),
      connectionId: options.connectionId ?? 1,
      shutdown: options.shutdown ?? Shutdown.never
    }))
    return client
  })

/**
 * Connects the project's client to an in-process session: handshake, structured replies
 * (or extended headers), meta contexts and GO as `client` asks. Closing the scope
 * disconnects both sides.
 */
export const connect = (
  client: Parameters<typeof NbdClient.connect>[1] = {},
  options: ConnectOptions = {}
): Effect.Effect<NbdClient.NbdClient, NbdClient.ClientError | NbdClient.OptionRefused, Scope.Scope | Export.ExportRegistry> =>
  Effect.flatMap(serve(options), (stream) => NbdClient.connect(stream, client))

/** Exports one driver layer as the default export (the empty name), for {@link connect}. */
export const exportDriver = <E, R>(
  driver: Layer.Layer<NbdDriver, E, R>,
  options: Export.ExportOptions = {}
): Layer.Layer<Export.ExportRegistry, E, R> => Export.ExportRegistry.layerDriver(options).pipe(Layer.provide(driver))
