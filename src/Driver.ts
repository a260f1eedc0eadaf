/**
 * The storage driver: the service an export reads from and writes to, and the filters
 * that stack on it.
 *
 * A driver is an `NbdDriver` service with one required operation, {@link NbdDriverShape.open}:
 * each client that selects the export opens it and gets a {@link DriverHandle}, scoped to
 * the client's session, holding the I/O operations and the {@link Capabilities} the
 * server obeys. Build a driver with {@link make} (shared state, every optional operation
 * filled with a sensible default); build a filter with {@link filter}, which wraps the
 * driver below and overrides only what it changes. I/O methods fail with
 * {@link ProtocolError} (its errno goes back to the client); `open` fails with
 * {@link OptionReplyError} to refuse a client.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import { type OptionReplyError, type ProtocolError, protocolError } from "./Errors.ts"
import { AllocationState } from "./protocol/Constants.ts"

/** Block-size constraints of an export, in bytes. */
export interface BlockSize {
  /** Power of two, 1 to 65536: offsets and lengths are multiples of it. */
  readonly minimum: number
  /** Power of two, at least max(minimum, 512): the size clients should prefer. */
  readonly preferred: number
  /** Largest payload of a single READ or WRITE. */
  readonly maximum: number
}

/** One run of blocks of the same `base:allocation` state. */
export interface Extent {
  readonly length: number
  /** Bits of {@link AllocationState}: HOLE (not allocated), ZERO (reads as zeroes). */
  readonly flags: number
}

/** Options of a write. */
export interface WriteOptions {
  /** Forced unit access: the data is durable when the effect succeeds. */
  readonly fua: boolean
}

/** Options of a zeroing write. */
export interface ZeroOptions extends WriteOptions {
  /** The range must stay allocated (no hole may be punched). */
  readonly noHole: boolean
  /** Fail at once with ENOTSUP unless zeroing is faster than writing zeroes. */
  readonly fastZero: boolean
}

/**
 * What a handle can do. The server advertises transmission flags from it and refuses
 * what it does not offer; filters compute theirs from the capabilities below them.
 */
export interface Capabilities {
  /** Writes, trims, zeroing and resizing are refused (READ_ONLY). */
  readonly readOnly: boolean
  /** `flush` makes earlier writes durable (SEND_FLUSH). */
  readonly flush: boolean
  /** Writes honour `fua` themselves; otherwise the server follows a FUA write with a flush. */
  readonly fua: boolean
  /** `trim` may discard data (SEND_TRIM). */
  readonly trim: boolean
  /** `writeZeroes` is offered (SEND_WRITE_ZEROES). */
  readonly zero: boolean
  /** `writeZeroes` with `fastZero` can succeed (otherwise answered ENOTSUP at once). */
  readonly fastZero: boolean
  /** `cache` is offered (SEND_CACHE). */
  readonly cache: boolean
  /** `resize` is offered (SEND_RESIZE). */
  readonly resize: boolean
  /** State is shared by every connection and `flush` covers all of them (CAN_MULTI_CONN). */
  readonly multiConn: boolean
  /** The medium is rotational (a scheduling hint). */
  readonly rotational: boolean
  /** `blockStatus` reports real allocation; otherwise the server reports everything as data. */
  readonly blockStatus: boolean
  readonly blockSize: BlockSize
}

/** How a client reached the server. */
export type Transport =
  | { readonly _tag: "Tcp"; readonly address: string; readonly port: number }
  | { readonly _tag: "Unix"; readonly path: string }
  | { readonly _tag: "InProcess" }

/** Who a TLS client proved to be. */
export interface TlsIdentity {
  /** Subject of the client certificate (`CN=alice,O=example`), when one was presented. */
  readonly subject: Option.Option<string>
  /** PSK identity (user name), when a pre-shared key was used. */
  readonly psk: Option.Option<string>
}

/** The client behind a connection, for drivers and filters that decide access or keep per-client state. */
export interface ClientInfo {
  /** Identifies the connection in logs. */
  readonly connectionId: number
  readonly transport: Transport
  /** Set once the connection is encrypted. */
  readonly tls: Option.Option<TlsIdentity>
}

/** What a client asked for when it selected an export. */
export interface OpenRequest {
  readonly exportName: string
  readonly client: ClientInfo
}

/**
 * Synchronous versions of the hottest operations, for drivers whose storage is in
 * memory and cannot fail once a request passed the server's checks. The server uses
 * them for READ and WRITE instead of starting a fiber per request; they must behave
 * exactly like the Effect operations. A throw is a defect, answered EIO.
 *
 * `read` returns the bytes as pieces that may be views of the driver's storage (no
 * copy): they are queued for sending at once, and the spec leaves the result of a
 * write that overlaps an unanswered read undefined. A number stands for that many
 * zero bytes (a hole), which structured replies send as OFFSET_HOLE chunks. `write`
 * may be called once per received piece of a payload (never concatenated).
 */
export interface SyncOperations {
  readonly size: () => number
  readonly read: (offset: number, length: number) => ReadonlyArray<Uint8Array | number>
  readonly write: (offset: number, data: Uint8Array) => void
  /**
   * Optional: {@link read} into a buffer the server gives (all of `target`, from
   * `offset`), for storage that would otherwise copy into a fresh buffer per read.
   */
  readonly readInto?: ((offset: number, target: Uint8Array) => void) | undefined
}

/**
 * A READ answered at once when that needs no waiting, for drivers whose data is often
 * at hand but not always (a file whose pages the page cache may hold): the server tries
 * it before starting a fiber for the request.
 */
export interface ReadNow {
  /** The current size (as the handle's `size`). */
  readonly size: () => number
  /**
   * Fills all of `target` with the bytes from `offset` if it can without waiting, and
   * says whether it did; when it did not, the server reads through `readInto` and the
   * contents of `target` do not matter. A throw is a defect, answered EIO.
   */
  readonly into: (offset: number, target: Uint8Array) => boolean
}

/**
 * A WRITE done at once when that needs no waiting, for drivers whose writes usually end
 * without blocking but not always (a file whose writes the page cache absorbs until the
 * kernel throttles them): the server tries it, with the payload's pieces as received,
 * before starting a fiber for the request. FUA writes always take the Effect path.
 */
export interface WriteNow {
  /** The current size (as the handle's `size`). */
  readonly size: () => number
  /**
   * Writes all of `pieces` (consecutive, from `offset`) if it can without waiting: `true`
   * when written, `false` when it wrote nothing and the server is to write through
   * `write`, or the error the client is answered with. The pieces may be views of the
   * server's receive buffer: no reference is kept once it returns. A throw is a defect,
   * answered EIO.
   */
  readonly write: (offset: number, pieces: ReadonlyArray<Uint8Array>) => boolean | ProtocolError
}

/**
 * A meta context a handle answers for BLOCK_STATUS besides `base:allocation` (which comes
 * from {@link DriverHandle.blockStatus}), such as `qemu:allocation-depth` or
 * `qemu:dirty-bitmap:NAME`. Its extents' flags are defined by its namespace.
 */
export interface MetaContextSource {
  /** The full name, `namespace:leaf`. */
  readonly name: string
  /** Consecutive extents from `offset`, at least one, covering at most `length` bytes. */
  readonly blockStatus: (offset: number, length: number) => Effect.Effect<ReadonlyArray<Extent>, ProtocolError>
}

/** One client's view of an export: its capabilities and I/O operations. Offsets and lengths are byte counts. */
export interface DriverHandle {
  readonly capabilities: Capabilities
  /** Current size in bytes. */
  readonly size: Effect.Effect<number, ProtocolError>
  readonly read: (offset: number, length: number) => Effect.Effect<Uint8Array, ProtocolError>
  /**
   * Optional: {@link read} into a buffer the server gives, filling all of `target` with
   * the bytes from `offset`. The server takes its buffers from a pool of the connection
   * and reuses one once its reply is sent, so a driver that would copy into a fresh
   * buffer per read saves the allocation. The driver may write into `target` only until
   * the effect ends (successfully or not).
   */
  readonly readInto?: ((offset: number, target: Uint8Array) => Effect.Effect<void, ProtocolError>) | undefined
  /** Optional: READ answered at once where possible (see {@link ReadNow}); used only with `readInto`. */
  readonly readNow?: ReadNow | undefined
  /** Optional: WRITE done at once where possible (see {@link WriteNow}). */
  readonly writeNow?: WriteNow | undefined
  /**
   * `write` keeps no reference to `data` once its effect ended (it copied the bytes), so
   * a payload the server has to gather or copy anyway goes into a buffer of the
   * connection's pool, reused after the write.
   */
  readonly writeCopies?: boolean | undefined
  readonly write: (offset: number, data: Uint8Array, options: WriteOptions) => Effect.Effect<void, ProtocolError>
  readonly flush: Effect.Effect<void, ProtocolError>
  readonly trim: (offset: number, length: number, options: WriteOptions) => Effect.Effect<void, ProtocolError>
  readonly writeZeroes: (offset: number, length: number, options: ZeroOptions) => Effect.Effect<void, ProtocolError>
  readonly cache: (offset: number, length: number) => Effect.Effect<void, ProtocolError>
  /** Allocation of `[offset, offset + length)`: consecutive extents from `offset`, at least one. */
  readonly blockStatus: (offset: number, length: number) => Effect.Effect<ReadonlyArray<Extent>, ProtocolError>
  readonly resize: (size: number) => Effect.Effect<void, ProtocolError>
  /** Optional synchronous fast path (see {@link SyncOperations}). */
  readonly sync?: SyncOperations | undefined
  /**
   * Meta contexts beyond `base:allocation`. They pass through a filter unless it replaces
   * them: a filter that moves offsets or changes what is read (offset, partition, cow) gives
   * its own list.
   */
  readonly contexts?: ReadonlyArray<MetaContextSource> | undefined
}

/** A storage driver (or a driver with filters stacked on it). */
export interface NbdDriverShape {
  /** Name of the driver (and its filters), for logs. */
  readonly name: string
  /** Canonical export name, sent as NBD_INFO_NAME when asked. */
  readonly canonicalName: Option.Option<string>
  /** Human-readable description, sent in LIST and NBD_INFO_DESCRIPTION. */
  readonly description: Option.Option<string>
  /**
   * Opens the export for a client (INFO, GO, EXPORT_NAME); fail to refuse it. The handle
   * lives as long as the scope: the client's session, or the INFO option that asked.
   */
  readonly open: (request: OpenRequest) => Effect.Effect<DriverHandle, OptionReplyError, Scope.Scope>
}

/** The storage driver service. */
export class NbdDriver extends Context.Tag("effect-nbd/NbdDriver")<NbdDriver, NbdDriverShape>() {}

/** What {@link make} needs: `size` and `read`; everything else is optional. */
export type DriverOptions =
  & Pick<DriverHandle, "size" | "read">
  & Partial<Omit<DriverHandle, "size" | "read" | "capabilities">>
  & {
    readonly name?: string | undefined
    readonly description?: string | undefined
    readonly canonicalName?: string | undefined
    /** Capabilities beyond those implied by the operations given. */
    readonly capabilities?: Partial<Omit<Capabilities, "blockSize">> | undefined
    readonly blockSize?: Partial<BlockSize> | undefined
    /** Asked when a client opens the export; fail to refuse it. */
    readonly open?: ((request: OpenRequest) => Effect.Effect<void, OptionReplyError>) | undefined
  }

const ZERO_CHUNK = 1024 * 1024

/**
 * The block sizes {@link make} gives a driver that names none: any alignment, 4 KiB
 * preferred, and READ and WRITE payloads up to 64 MiB accepted, as nbdkit and nbd-server
 * do (the spec's 32 MiB is what a client that asks nothing should assume, not a limit).
 */
export const DEFAULT_BLOCK_SIZE: BlockSize = { minimum: 1, preferred: 4096, maximum: 64 * 1024 * 1024 }

/** Zeroing by writing zero buffers through `write` (never "fast"). */
export const zeroesByWriting = (write: DriverHandle["write"]): DriverHandle["writeZeroes"] => (offset, length, options) =>
  options.fastZero
    ? Effect.fail(protocolError("ENOTSUP", "zeroing is not faster than writing"))
    : Effect.gen(function*() {
      const zeroes = new Uint8Array(Math.min(length, ZERO_CHUNK))
      for (let done = 0; done < length; done += zeroes.length) {
        const n = Math.min(zeroes.length, length - done)
        yield* write(offset + done, zeroes.subarray(0, n), options)
      }
    })

/** Reading into a new zeroed buffer of the length asked for, filled by `readInto`. */
export const readByReadingInto =
  (readInto: NonNullable<DriverHandle["readInto"]>): DriverHandle["read"] => (offset, length) =>
    Effect.suspend(() => {
      const out = new Uint8Array(length)
      return Effect.as(readInto(offset, out), out)
    })

const unsupported = (what: string) => Effect.fail(protocolError("EINVAL", `${what} is not supported`))

/**
 * Builds a driver whose state is shared by every connection (each `open` returns the
 * same handle), filling in what is left out:
 * - no `write`: read-only;
 * - no `flush`: FLUSH and FUA not offered;
 * - no `trim`: TRIM not offered;
 * - no `writeZeroes`: zeroing done by writing zero buffers (never "fast");
 * - no `cache`: CACHE offered as a no-op hint;
 * - no `blockStatus`: the whole range reported as allocated data;
 * - no `resize`: RESIZE not offered.
 */
export const make = (options: DriverOptions): NbdDriverShape => {
  const write = options.write
  const writeOrFail: DriverHandle["write"] = write ??
    (() => Effect.fail(protocolError("EPERM", "the export is read-only")))
  const capabilities: Capabilities = {
    readOnly: write === undefined,
    flush: options.flush !== undefined,
    fua: false,
    trim: options.trim !== undefined,
    zero: write !== undefined,
    fastZero: false,
    cache: true,
    resize: options.resize !== undefined,
    multiConn: false,
    rotational: false,
    blockStatus: options.blockStatus !== undefined,
    ...options.capabilities,
    blockSize: { ...DEFAULT_BLOCK_SIZE, ...options.blockSize }
  }
  const handle: DriverHandle = {
    capabilities,
    size: options.size,
    read: options.read,
    readInto: options.readInto,
    readNow: options.readNow,
    writeNow: write === undefined ? undefined : options.writeNow,
    writeCopies: options.writeCopies,
    write: writeOrFail,
    flush: options.flush ?? unsupported("flush"),
    trim: options.trim ?? (() => unsupported("trim")),
    writeZeroes: options.writeZeroes ?? zeroesByWriting(writeOrFail),
    cache: options.cache ?? (() => Effect.void),
    blockStatus: options.blockStatus ?? ((_, length) => Effect.succeed([{ length, flags: 0 }])),
    resize: options.resize ?? (() => unsupported("resize")),
    sync: options.sync
  }
  const check = options.open
  return {
    name: options.name ?? "custom",
    canonicalName: Option.fromNullable(options.canonicalName),
    description: Option.fromNullable(options.description),
    open: check === undefined ? () => Effect.succeed(handle) : (request) => Effect.as(check(request), handle)
  }
}

/**
 * What a filter replaces in the handle below it. Capabilities are given as a function
 * of those below (a filter that lowers one is obeyed by the server).
 *
 * The synchronous fast path of the handle below passes through only when the filter
 * replaces none of `size`, `read` and `write`; a filter that does may give its own
 * `sync` (or `sync: undefined` to drop it explicitly). Likewise `readInto` passes through
 * only when the filter does not replace `read`, `readNow` only when it replaces none
 * of `size`, `read` and `readInto`, `writeNow` only when it replaces none of `size`,
 * `read` and `write`, and `writeCopies` only when it does not replace `write`, unless it
 * gives its own.
 */
export type HandleOverrides =
  & Partial<Omit<DriverHandle, "capabilities">>
  & { readonly capabilities?: ((below: Capabilities) => Capabilities) | undefined }

/** Applies overrides to a handle (see {@link HandleOverrides} for the fast path rule). */
export const override = (below: DriverHandle, overrides: HandleOverrides): DriverHandle => {
  const { capabilities, ...operations } = overrides
  const changesData = overrides.size !== undefined || overrides.read !== undefined || overrides.write !== undefined
  const sync = "sync" in overrides ? overrides.sync : changesData ? undefined : below.sync
  const readInto = "readInto" in overrides ? overrides.readInto : overrides.read !== undefined ? undefined : below.readInto
  const readNow = "readNow" in overrides
    ? overrides.readNow
    : changesData || overrides.readInto !== undefined
    ? undefined
    : below.readNow
  const writeNow = "writeNow" in overrides ? overrides.writeNow : changesData ? undefined : below.writeNow
  const writeCopies = "writeCopies" in overrides ? overrides.writeCopies : overrides.write !== undefined ? undefined : below.writeCopies
  return {
    ...below,
    ...operations,
    capabilities: capabilities === undefined ? below.capabilities : capabilities(below.capabilities),
    sync,
    readInto,
    readNow,
    writeNow,
    writeCopies
  }
}

/** How a filter made with {@link filter} changes the driver below it. */
export interface FilterOptions {
  /** The filter's name; the stack is named `name+below`. */
  readonly name: string
  /** Replaces the description of the driver below. */
  readonly description?: string | undefined
  /**
   * Called with the handle below each time a client opens the export (in the client's
   * scope: finalizers run when its session ends); returns what the filter replaces.
   */
  readonly open: (
    below: DriverHandle,
    request: OpenRequest
  ) => HandleOverrides | Effect.Effect<HandleOverrides, OptionReplyError, Scope.Scope>
}

/** Wraps a driver in a filter: the handle below is opened first, then the filter's overrides apply. */
export const filter = (below: NbdDriverShape, options: FilterOptions): NbdDriverShape => ({
  name: `${options.name}+${below.name}`,
  canonicalName: below.canonicalName,
  description: options.description === undefined ? below.description : Option.some(options.description),
  open: (request) =>
    Effect.flatMap(below.open(request), (handle) => {
      const overrides = options.open(handle, request)
      return Effect.isEffect(overrides)
        ? Effect.map(overrides, (o) => override(handle, o))
        : Effect.succeed(override(handle, overrides))
    })
})

/**
 * A filter: builds the driver it presents from the driver below, in the scope of the
 * stack (state shared by every connection, such as a cache, lives there).
 */
export type Filter<E = never> = (below: NbdDriverShape) => Effect.Effect<NbdDriverShape, E, Scope.Scope>

/** A filter as a layer: wraps the `NbdDriver` in context (stack them with `Layer.provide`). */
export const filterLayer = <E>(f: Filter<E>): Layer.Layer<NbdDriver, E, NbdDriver> =>
  Layer.scoped(NbdDriver, Effect.flatMap(NbdDriver, f))

/** Applies filters to a driver, the first named nearest the client (nbdkit's order). */
export const stack = <E>(
  driver: NbdDriverShape,
  filters: ReadonlyArray<Filter<E>>
): Effect.Effect<NbdDriverShape, E, Scope.Scope> =>
  Effect.reduce([...filters].reverse(), driver, (below, f) => f(below))

/** `AllocationState` flags of a range that is unallocated and reads as zeroes. */
export const HOLE_ZERO = AllocationState.HOLE | AllocationState.ZERO
