/**
 * Receiving a connection's bytes into one buffer the server owns and reuses, instead of
 * the fresh 64 KiB buffer Node.js allocates for every read.
 *
 * Node.js reads into a caller's buffer when a socket is created with the `onread` option,
 * but its socket server offers no such option for accepted connections. An accepted
 * connection is therefore taken over: the server accepts it paused (`pauseOnConnect`),
 * and {@link adopt} moves its handle (`socket._handle`, not public API) into a new socket
 * created with `onread`. That access lives in this module only; when a Node.js release
 * changes the shape it relies on, {@link adopt} reports it and the connection keeps the
 * default receive path.
 *
 * A TLS socket made over a connection is taken over in place ({@link adoptTls}): its
 * decrypted bytes land in the connection's buffer instead of a new one per TLS record.
 *
 * After each {@link QuickAck.BULK_READ} bytes a plain TCP connection receives, the kernel
 * is asked to acknowledge at once ({@link QuickAck}), so that a client streaming writes is
 * not held back.
 *
 * The bytes handed to a {@link Sink} are a view of the reused buffer: they are valid only
 * until the sink returns, and a sink copies what it keeps.
 *
 * @since 0.2.0
 */
import * as Net from "node:net"
import type { Duplex } from "node:stream"
import * as QuickAck from "./QuickAck.ts"

/**
 * Takes the bytes of one read (valid until it returns); returning `false` stops reading
 * until the socket is resumed.
 *
 * @since 0.2.0
 * @category models
 */
export type Sink = (bytes: Buffer) => boolean

/**
 * The receive side of an adopted socket: where its bytes go.
 *
 * @since 0.2.0
 * @category models
 */
export interface OwnedSource {
  /** Sends the bytes of the next reads to `sink`; without one, bytes wait (copied) and reading stops. */
  readonly setSink: (sink: Sink | undefined) => void
}

/** The internal shape of an accepted socket this module relies on. */
interface StreamHandle {
  /** The socket's descriptor (where it has one). */
  readonly fd?: number | undefined
  readonly readStart: () => number
  readonly readStop: () => number
  readonly useUserBuffer: (buffer: Uint8Array) => void
}

/** Internal fields of `net.Socket` this module reads or moves. */
interface SocketInternals {
  _handle: unknown
  _server: Net.Server | null
  server: Net.Server | null
}

const sources = new WeakMap<Duplex, OwnedSource>()

/** Receive buffers of closed connections kept for new ones, at most this many (8 MiB with the default 1 MiB buffers). */
export const POOLED_BUFFERS = 8

/**
 * Receive buffers of closed connections: a new connection takes one of its size instead of
 * allocating, which spares a short-lived connection (a client asking for the export list,
 * say) the allocation and the garbage collections a 1 MiB buffer per connection causes.
 */
const idleBuffers: Array<Buffer> = []

/** The most recently given back buffer of `size` bytes (still in the processor's cache), or a new one. */
const takeBuffer = (size: number): Buffer => {
  for (let i = idleBuffers.length - 1; i >= 0; i--) {
    if (idleBuffers[i]!.length === size) return idleBuffers.splice(i, 1)[0]!
  }
  return Buffer.allocUnsafeSlow(size)
}

/** Gives a socket's receive buffer back once the socket is closed: its handle (plain or TLS) reads no more. */
const giveBackOnClose = (socket: Net.Socket, buffer: Buffer): void => {
  socket.once("close", () => {
    if (idleBuffers.length < POOLED_BUFFERS) idleBuffers.push(buffer)
  })
}

/**
 * The owned receive side of `stream`, if it was made by {@link adopt}.
 *
 * @since 0.2.0
 * @category accessors
 */
export const sourceOf = (stream: Duplex): OwnedSource | undefined => sources.get(stream)

/**
 * Whether an accepted socket has the handle {@link adopt} needs (false when a Node.js
 * release changed it).
 *
 * @since 0.2.0
 * @category predicates
 */
export const canAdopt = (socket: Net.Socket): boolean => {
  const handle = (socket as unknown as SocketInternals)._handle as Partial<StreamHandle> | null | undefined
  return typeof handle === "object" && handle !== null && typeof handle.readStart === "function" &&
    typeof handle.readStop === "function" && typeof handle.useUserBuffer === "function"
}

/**
 * Moves a connection accepted paused into a socket that receives into a buffer of
 * `bufferSize` bytes owned by the connection (one a closed connection left, when there
 * is one); `undefined` (the connection untouched) when the handle is not what this module
 * expects.
 *
 * @since 0.2.0
 * @category constructors
 */
export const adopt = (accepted: Net.Socket, bufferSize: number): Net.Socket | undefined => {
  if (!canAdopt(accepted)) return undefined
  const old = accepted as unknown as SocketInternals
  const receiving = receiver(quickAcker(accepted, old._handle as StreamHandle))
  const buffer = takeBuffer(bufferSize)
  const socket = new Net.Socket({
    handle: old._handle,
    readable: true,
    writable: true,
    allowHalfOpen: accepted.allowHalfOpen,
    onread: { buffer, callback: receiving.callback }
  } as Net.SocketConstructorOpts & { handle: unknown })
  giveBackOnClose(socket, buffer)
  // The server counts its connections through the socket that closes: the new one now.
  const adopted = socket as unknown as SocketInternals
  adopted._server = old._server
  adopted.server = old.server
  old._server = null
  old._handle = null
  receiving.register(socket)
  return socket
}

/** The `onread` callback of one socket, and its registration as an {@link OwnedSource}. */
interface Receiver {
  readonly callback: (n: number, buffer: Uint8Array) => boolean
  readonly register: (socket: Net.Socket) => void
}

/**
 * What asks for quick acknowledgements on a TCP connection's descriptor; `undefined` for
 * other sockets or where {@link QuickAck} is unavailable.
 */
const quickAcker = (socket: Net.Socket, handle: StreamHandle): (() => void) | undefined => {
  const fd = handle.fd
  const tcp = socket.remoteFamily === "IPv4" || socket.remoteFamily === "IPv6"
  if (!tcp || typeof fd !== "number" || fd < 0) return undefined
  const quickAck = QuickAck.load()
  return quickAck === undefined ? undefined : () => quickAck(fd)
}

/**
 * Bytes go to the sink once there is one; until then they are copied, kept, and reading
 * stops. `ack` runs after the read that completes each {@link QuickAck.BULK_READ} bytes.
 */
const receiver = (ack?: () => void): Receiver => {
  let sink: Sink | undefined
  const waiting: Array<Buffer> = []
  let unacked = 0
  return {
    callback: (n, buffer) => {
      if (ack !== undefined && (unacked += n) >= QuickAck.BULK_READ) {
        unacked = 0
        ack()
      }
      const bytes = (buffer as Buffer).subarray(0, n)
      if (sink !== undefined) return sink(bytes)
      waiting.push(Buffer.from(bytes))
      return false
    },
    register: (socket) =>
      sources.set(socket, {
        setSink: (next) => {
          sink = next
          if (next === undefined) return
          for (const bytes of waiting.splice(0)) next(bytes)
          socket.resume()
        }
      })
  }
}

/** The private symbols under which `net.Socket` keeps an `onread` buffer and its callback. */
const onreadSymbols = (socket: Net.Socket): { readonly buffer: symbol; readonly callback: symbol } | undefined => {
  const symbols = Object.getOwnPropertySymbols(socket)
  const buffer = symbols.find((symbol) => symbol.description === "kBuffer")
  const callback = symbols.find((symbol) => symbol.description === "kBufferCb")
  return buffer === undefined || callback === undefined ? undefined : { buffer, callback }
}

/**
 * Makes a TLS socket deliver its decrypted bytes into a buffer of `bufferSize` bytes owned
 * by the connection (one a closed connection left, when there is one), in place of a fresh
 * buffer per TLS record. The buffer is given back once the socket has closed: Node.js emits
 * `close` after the TLS layer and the connection under it are closed, so nothing decrypts
 * into it any more. Node.js offers `onread` only to TLS sockets it connects itself, so this
 * sets what that option would have set (the socket's private `onread` fields and its TLS
 * handle's user buffer). Call it right after
 * the socket is made, before its handshake: bytes that arrive before a reader takes them are
 * copied and kept. Returns `false` (the socket untouched) when a Node.js release changed
 * what this relies on.
 *
 * @since 0.2.0
 * @category constructors
 */
export const adoptTls = (socket: Net.Socket, bufferSize: number): boolean => {
  const symbols = onreadSymbols(socket)
  const handle = (socket as unknown as SocketInternals)._handle as Partial<StreamHandle> | null | undefined
  if (symbols === undefined || typeof handle !== "object" || handle === null || typeof handle.useUserBuffer !== "function") {
    return false
  }
  const buffer = takeBuffer(bufferSize)
  giveBackOnClose(socket, buffer)
  // No quick acknowledgements here: decryption bounds a TLS connection's speed, not the client's window.
  const receiving = receiver()
  const fields = socket as unknown as Record<symbol, unknown>
  fields[symbols.buffer] = buffer
  fields[symbols.callback] = receiving.callback
  handle.useUserBuffer(buffer)
  receiving.register(socket)
  return true
}
