/**
 * One client connection: negotiation, then transmission, in its own scope.
 *
 * A session never fails: a peer that disconnects, breaks the protocol or trips a defect
 * is logged with the connection id and ends this session only.
 *
 * Every log line of a session carries the annotations `connection` (its id), `remote`
 * (the client's address, when it has one) and, once one is selected, `export`. With
 * tracing on ({@link RequestTracing}), the session is an `nbd.session` span, parent of
 * its requests' spans.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"
import * as Option from "effect/Option"
import type { Duplex } from "node:stream"
import type * as tls from "node:tls"
import type { TlsIdentity, Transport } from "../Driver.ts"
import { RequestTracing, SESSION_SPAN } from "../observability/Tracing.ts"
import { CurrentMetrics, type ServerMetrics } from "./Metrics.ts"
import type { ExportRegistry } from "../Export.ts"
import * as FrameReader from "../stream/FrameReader.ts"
import * as Negotiation from "./Negotiation.ts"
import * as FrameWriter from "../stream/FrameWriter.ts"
import type { ServerConfig } from "./ServerConfig.ts"
import { SessionTimeout } from "./SessionTimeout.ts"
import type { Shutdown } from "./Shutdown.ts"
import * as Tls from "./Tls.ts"
import * as Transmission from "./Transmission.ts"

/** What a session needs besides its stream. */
export interface SessionOptions {
  readonly config: ServerConfig
  /** Identifies the connection in logs. */
  readonly connectionId: number
  /** The server's shutdown signal. */
  readonly shutdown: Shutdown
  /** How the client is connected (in process when absent). */
  readonly transport?: Transport | undefined
  /** Where the session's requests are counted (the {@link CurrentMetrics} in context when absent). */
  readonly metrics?: ServerMetrics | undefined
}

/** The client's address as logs and spans show it (none in process). */
export const remoteAddress = (transport: Transport | undefined): string | undefined => {
  switch (transport?._tag) {
    case "Tcp":
      return transport.address.includes(":") ? `[${transport.address}]:${transport.port}` : `${transport.address}:${transport.port}`
    case "Unix":
      return `unix:${transport.path}`
    default:
      return undefined
  }
}

/** The identity a TLS client proved: its certificate's subject, or its PSK user. */
export const tlsIdentity = (socket: tls.TLSSocket): TlsIdentity => {
  const certificate = socket.getPeerCertificate()
  const subject = certificate !== null && typeof certificate === "object" && certificate.subject !== undefined
    ? Option.some(Object.entries(certificate.subject).map(([key, value]) => `${key}=${String(value)}`).join(","))
    : Option.none()
  return { subject, psk: Tls.pskIdentity(socket) }
}

/** Serves one client over a byte stream (a socket, a TLS socket, or an in-process pipe). */
export const run = (stream: Duplex, options: SessionOptions): Effect.Effect<void, never, ExportRegistry> =>
  Effect.flatMap(RequestTracing, (tracing) => {
    const remote = remoteAddress(options.transport)
    const annotations = remote === undefined ? { connection: options.connectionId } : { connection: options.connectionId, remote }
    const session = Effect.annotateLogs(serveSession(stream, options, tracing.enabled), annotations)
    if (!tracing.enabled) return session
    const attributes = remote === undefined
      ? { "nbd.connection": options.connectionId }
      : { "nbd.connection": options.connectionId, "nbd.remote": remote }
    return Effect.withSpan(session, SESSION_SPAN, { kind: "server", captureStackTrace: false, attributes })
  })

const serveSession = (stream: Duplex, options: SessionOptions, tracing: boolean): Effect.Effect<void, never, ExportRegistry> =>
  Effect.scoped(
    Effect.gen(function*() {
      const { config, shutdown } = options
      const tlsConfig = config.tls
      const scope = yield* Effect.scope
      /** A reader and a writer over a stream (the plain one, then the encrypted one), for the session's life. */
      const attach = (over: Duplex) =>
        Effect.map(
          Scope.extend(FrameReader.make(over, { highWaterMark: config.readHighWaterMark }), scope),
          (reader) => ({ reader, writer: FrameWriter.make(over, { highWaterMark: config.writeHighWaterMark }) })
        )
      let { reader, writer } = yield* attach(stream)
      // Ends whichever writer is current: over TLS, that also closes the TLS session.
      yield* Effect.addFinalizer(() => Effect.suspend(() => writer.end))

      const tls: Negotiation.StartTls | undefined = tlsConfig === undefined ? undefined : {
        mode: tlsConfig.mode,
        start: (acknowledge) =>
          Effect.gen(function*() {
            reader.detach()
            stream.pause()
            yield* acknowledge
            writer.flush()
            // An empty write completes once everything written before it left: the ACK is out in the clear.
            yield* Effect.async<void>((resume) => {
              stream.write(new Uint8Array(0), () => resume(Effect.void))
            })
            const owned = config.receiveBuffer === "owned" ? config.receiveBufferSize : undefined
            const socket = yield* Tls.upgrade(stream, tlsConfig, owned)
            const secure = yield* attach(socket)
            reader = secure.reader
            writer = secure.writer
            return { ...secure, identity: tlsIdentity(socket) }
          })
      }

      const client = { connectionId: options.connectionId, transport: options.transport ?? { _tag: "InProcess" as const } }
      const negotiation = Negotiation.negotiate({ reader, writer, config, shutdown, tls, client })
      const millis = config.handshakeTimeoutMillis
      const outcome = yield* millis > 0
        ? Effect.timeoutFail(negotiation, {
          duration: millis,
          onTimeout: () => new SessionTimeout({ phase: "negotiation", millis })
        })
        : negotiation
      if (outcome._tag === "Aborted") {
        yield* Effect.logDebug("client aborted negotiation")
        return
      }
      const { negotiated } = outcome
      const exp = negotiated.export
      yield* Effect.annotateLogsScoped({ export: exp.name })
      yield* Effect.logDebug(
        `client selected export '${exp.name}' (${negotiated.size} bytes, ` +
          `${negotiated.structuredReplies ? "structured" : "simple"} replies)`
      )
      const metrics = (options.metrics ?? (yield* CurrentMetrics)).forExport(exp.name)
      if (tracing) yield* Effect.annotateCurrentSpan("nbd.export", exp.name)
      yield* Transmission.serve({ reader: outcome.reader, writer: outcome.writer, config, negotiated, shutdown, metrics, tracing })
      yield* Effect.logDebug("client disconnected")
    })
  ).pipe(
    Effect.catchTags({
      ConnectionClosed: (e) =>
        e.missing > 0 && e.reason !== "end-of-stream"
          ? Effect.logInfo(`connection lost: ${e.description}`)
          : Effect.logDebug(`connection closed by the client: ${e.description}`),
      ProtocolViolation: (e) => Effect.logWarning(`closing connection: ${e.message}`),
      SessionTimeout: (e) => Effect.logInfo(`closing connection: ${e.description}`)
    }),
    Effect.catchAllCause((cause) =>
      Cause.isInterruptedOnly(cause) ? Effect.void : Effect.logError("session ended by a defect", cause)
    )
  )
