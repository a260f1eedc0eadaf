/**
 * Tunables of a server and its sessions, with the defaults nbdkit users would expect.
 *
 * @since 0.1.0
 */

import type { TlsConfig } from "./Tls.ts"

/** Limits and behaviour of every session of a server. */
export interface ServerConfig {
  /** STARTTLS settings; none means NOTLS mode (STARTTLS refused with ERR_POLICY). */
  readonly tls: TlsConfig | undefined
  /** Option data above this many bytes is read, discarded and answered ERR_TOO_BIG. */
  readonly maxOptionLength: number
  /** Option data above this many bytes closes the connection (denial of service). */
  readonly maxOptionDiscard: number
  /** Write payloads above the export's maximum but at most this are discarded and answered EINVAL; larger ones close the connection. */
  readonly maxWriteDiscard: number
  /** Requests of one connection processed at the same time. */
  readonly maxInFlight: number
  /** Bytes of write payload one connection may hold while its writes are in flight. */
  readonly maxInFlightBytes: number
  /** Unread received bytes above which a connection stops reading its socket. */
  readonly readHighWaterMark: number
  /**
   * Queued reply bytes above which a connection stops taking requests. Kept small (4 MiB by
   * default) so that a READ's bytes are still in the processor's cache when the socket
   * copies them: with 16 MiB, four connections copying out of a file ran at 0.7-0.8x of
   * one-connection speed per byte of CPU.
   */
  readonly writeHighWaterMark: number
  /** Offer extended headers (experimental extension: 64-bit lengths, 32-byte headers). */
  readonly extendedHeaders: boolean
  /** How long a closing session waits for its in-flight requests, in milliseconds. */
  readonly drainTimeoutMillis: number
  /** How long a shutting-down server waits for its sessions to end, in milliseconds. */
  readonly shutdownGraceMillis: number
  /**
   * How long a client may take to finish negotiating (TLS handshake included) before it is
   * disconnected, in milliseconds; 0 waits forever.
   */
  readonly handshakeTimeoutMillis: number
  /** How long a connection in transmission may stay idle (no request, none in flight) before it is closed; 0 never. */
  readonly idleTimeoutMillis: number
  /** Connections served at once; one more is closed as soon as it is accepted. */
  readonly maxConnections: number
  /** Largest READ or WRITE payload of any export (its own block-size maximum may be lower). */
  readonly maxRequest: number
  /**
   * How accepted connections receive bytes: `"owned"` (the default), into one reused buffer
   * of `receiveBufferSize` bytes per connection (see `OwnedReceive`; 1 MiB writes several
   * times faster, without the garbage a new buffer per read makes); `"stream"`, Node.js's
   * default path (a new buffer per read). On a server with TLS, connections negotiate on
   * Node.js's path, and once encrypted receive their decrypted bytes into the owned buffer.
   */
  readonly receiveBuffer: "owned" | "stream"
  /** Size of a connection's receive buffer in `"owned"` mode, in bytes. */
  readonly receiveBufferSize: number
}

/** The defaults. */
export const defaults: ServerConfig = {
  tls: undefined,
  maxOptionLength: 64 * 1024,
  maxOptionDiscard: 16 * 1024 * 1024,
  maxWriteDiscard: 128 * 1024 * 1024,
  maxInFlight: 64,
  maxInFlightBytes: 128 * 1024 * 1024,
  readHighWaterMark: 4 * 1024 * 1024,
  writeHighWaterMark: 4 * 1024 * 1024,
  extendedHeaders: true,
  drainTimeoutMillis: 30_000,
  shutdownGraceMillis: 5_000,
  handshakeTimeoutMillis: 10_000,
  idleTimeoutMillis: 0,
  maxConnections: 100,
  maxRequest: 64 * 1024 * 1024,
  receiveBuffer: "owned",
  receiveBufferSize: 1024 * 1024
}

/** The defaults with some values replaced. */
export const make = (overrides: Partial<ServerConfig> = {}): ServerConfig => ({ ...defaults, ...overrides })
