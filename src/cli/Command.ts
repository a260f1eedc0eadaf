/**
 * The `effect-nbd` command line.
 *
 * @since 0.1.0
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import type { NbdDriverShape } from "../Driver.ts"
import * as FileDriver from "../drivers/File.ts"
import * as MemoryDriver from "../drivers/Memory.ts"
import * as Export from "../Export.ts"
import { DEFAULT_PORT } from "../protocol/Constants.ts"
import * as Server from "../server/Server.ts"
import * as Tls from "../server/Tls.ts"
import { parseExportSpec } from "./ExportSpec.ts"
import { formatSize, parseSize } from "../Size.ts"

const port = Options.integer("port").pipe(
  Options.withAlias("p"),
  Options.withDefault(DEFAULT_PORT),
  Options.withDescription(`TCP port to listen on (0 picks a free port)`)
)
const host = Options.text("host").pipe(
  Options.withDefault("127.0.0.1"),
  Options.withDescription("Address to listen on; NBD has no authentication, so the default is loopback only")
)
const socket = Options.text("unix").pipe(
  Options.withAlias("U"),
  Options.optional,
  Options.withDescription("Listen on this Unix socket path instead of TCP")
)
const exportName = Options.text("export-name").pipe(
  Options.withAlias("e"),
  Options.withDefault(""),
  Options.withDescription("Name of the export (the empty default export answers any client that asks for \"\")")
)
const description = Options.text("description").pipe(
  Options.optional,
  Options.withDescription("Description shown to clients that list exports")
)
const readOnly = Options.boolean("read-only").pipe(
  Options.withAlias("r"),
  Options.withDescription("Refuse writes")
)
const verbose = Options.boolean("verbose").pipe(
  Options.withAlias("v"),
  Options.withDescription("Log every connection and refused request")
)

const tlsMode = Options.choice("tls", ["off", "on", "require"]).pipe(
  Options.withDefault("off" as const),
  Options.withDescription("STARTTLS: off, on (clients may upgrade) or require (clients must upgrade before anything else)")
)
const tlsCertificates = Options.directory("tls-certificates", { exists: "yes" }).pipe(
  Options.optional,
  Options.withDescription("Directory with server-cert.pem, server-key.pem and optionally ca-cert.pem (nbdkit's layout)")
)
const tlsVerifyPeer = Options.boolean("tls-verify-peer").pipe(
  Options.withDescription("Require client certificates signed by ca-cert.pem")
)

const listenOptions = { port, host, socket, verbose, tlsMode, tlsCertificates, tlsVerifyPeer }
type Listen = {
  readonly port: number
  readonly host: string
  readonly socket: Option.Option<string>
  readonly verbose: boolean
  readonly tlsMode: "off" | "on" | "require"
  readonly tlsCertificates: Option.Option<string>
  readonly tlsVerifyPeer: boolean
}

const common = { ...listenOptions, exportName, description, readOnly }
type Common = Listen & {
  readonly exportName: string
  readonly description: Option.Option<string>
  readonly readOnly: boolean
}

const usageError = (message: string) => Effect.fail(new Error(message))

/** The TLS settings of the command line, loaded. */
const tlsConfig = (options: Listen) =>
  Effect.gen(function*() {
    if (options.tlsMode === "off") {
      if (Option.isSome(options.tlsCertificates)) return yield* usageError("--tls-certificates needs --tls on or --tls require")
      return undefined
    }
    if (Option.isNone(options.tlsCertificates)) return yield* usageError(`--tls ${options.tlsMode} needs --tls-certificates DIR`)
    return yield* Tls.loadCertificates(options.tlsCertificates.value, options.tlsMode, options.tlsVerifyPeer)
  })

/** An export to serve, and whether it was made read-only (for the line that announces it). */
interface Served {
  readonly export: Export.NbdExport
  /** The driver at the bottom of the stack. */
  readonly driver: string
  readonly readOnly: boolean
}

/** Serves exports until interrupted, printing their URIs. */
const serveExports = (options: Listen, served: ReadonlyArray<Served>) => {
  const exports = served.map((s) => s.export)
  const listen: Server.ListenOptions = Option.match(options.socket, {
    onNone: () => ({ host: options.host, port: options.port }),
    onSome: (path) => ({ path })
  })
  return Effect.gen(function*() {
    const tls = yield* tlsConfig(options)
    return yield* Effect.gen(function*() {
      const server = yield* Server.NbdServer
      for (const { driver, export: exp, readOnly } of served) {
        yield* Console.log(
          `effect-nbd: serving ${driver} export${readOnly ? " (read-only)" : ""} at ` +
            Server.uri(server.address, exp.name, { tls: tls?.mode === "require" })
        )
      }
      return yield* Effect.never
    }).pipe(
      Effect.provide(Server.layer(listen, { tls }).pipe(Layer.provide(Export.ExportRegistry.layer(exports)))),
      Effect.catchTag("SocketServerError", (e) =>
        usageError(
          `cannot listen on ${"path" in listen ? listen.path : `${listen.host}:${listen.port}`}: ` +
            (e.cause instanceof Error ? e.cause.message : String(e.cause))
        ))
    )
  }).pipe(
    Logger.withMinimumLogLevel(options.verbose ? LogLevel.Debug : LogLevel.Info),
    // Logs go to standard error; standard output carries only the URIs served.
    Effect.provide(Logger.replace(Logger.defaultLogger, Logger.prettyLogger({ stderr: true })))
  )
}

const memoryDriver = (size: number, description: string | undefined) =>
  size > MemoryDriver.MAX_SIZE
    ? usageError(`size ${size} exceeds the memory driver's maximum of ${MemoryDriver.MAX_SIZE} bytes`)
    : MemoryDriver.make({ size, description: description ?? `${formatSize(size)} in-memory export` })

const fileDriver = (path: string, readOnly: boolean, description: string | undefined) =>
  FileDriver.make({ path, readOnly, description }).pipe(Effect.mapError((e) => new Error(e.message)))

const single = (options: Common, driver: NbdDriverShape) =>
  serveExports(options, [{
    export: Export.make(driver, {
      name: options.exportName,
      description: Option.getOrUndefined(options.description),
      readOnly: options.readOnly
    }),
    driver: driver.name,
    readOnly: options.readOnly
  }])

const memory = Command.make(
  "memory",
  {
    ...common,
    size: Args.text({ name: "size" }).pipe(
      Args.withDescription("Export size, e.g. 1G, 512M, 1T (sparse: costs nothing until written)")
    )
  },
  (options) =>
    Effect.gen(function*() {
      const size = yield* Either.match(parseSize(options.size), { onLeft: usageError, onRight: Effect.succeed })
      const driver = yield* memoryDriver(size, Option.getOrUndefined(options.description))
      return yield* single(options, driver)
    })
).pipe(Command.withDescription("Serve a sparse in-memory export of the given size"))

const file = Command.make(
  "file",
  { ...common, path: Args.text({ name: "path" }).pipe(Args.withDescription("A regular file to export")) },
  (options) =>
    Effect.scoped(Effect.gen(function*() {
      const driver = yield* fileDriver(options.path, options.readOnly, Option.getOrUndefined(options.description))
      return yield* single(options, driver)
    }))
).pipe(Command.withDescription("Serve a regular file (multi-connection; FLUSH and FUA are fdatasync)"))

const serve = Command.make(
  "serve",
  {
    ...listenOptions,
    exports: Args.text({ name: "export" }).pipe(
      Args.atLeast(1),
      Args.withDescription(
        "NAME=DRIVER:ARGUMENT[,read-only][,description=TEXT], e.g. disk=file:/srv/disk.img scratch=memory:1T; " +
          "the first export is also the default one"
      )
    )
  },
  (options) =>
    Effect.scoped(Effect.gen(function*() {
      const specs = yield* Effect.forEach(options.exports, (text) =>
        Either.match(parseExportSpec(text), { onLeft: usageError, onRight: Effect.succeed }))
      const names = new Set(specs.map((spec) => spec.name))
      if (names.size !== specs.length) return yield* usageError("two exports have the same name")
      const exports = yield* Effect.forEach(specs, (spec) =>
        Effect.map(
          spec.driver === "memory"
            ? memoryDriver(spec.size, spec.description)
            : fileDriver(spec.path, spec.readOnly, spec.description),
          (driver) => ({
            export: Export.make(driver, { name: spec.name, description: spec.description, readOnly: spec.readOnly }),
            driver: driver.name,
            readOnly: spec.readOnly
          })
        ))
      return yield* serveExports(options, exports)
    }))
).pipe(Command.withDescription("Serve several exports, memory or file, from one server"))

/** The root command. */
export const command = Command.make("effect-nbd").pipe(
  Command.withDescription("A Network Block Device (NBD) server"),
  Command.withSubcommands([memory, file, serve])
)

/** Runs the command line on `argv`. */
export const run = Command.run(command, { name: "effect-nbd", version: "0.1.0" })
