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
import * as Catalog from "../Catalog.ts"
import * as Driver from "../Driver.ts"
import * as Export from "../Export.ts"
import * as LogFormat from "../observability/LogFormat.ts"
import type { DriverPlugin } from "../Plugin.ts"
import { DEFAULT_PORT } from "../protocol/Constants.ts"
import * as Server from "../server/Server.ts"
import * as ServerConfig from "../server/ServerConfig.ts"
import { parseSize } from "../Size.ts"
import * as Tls from "../server/Tls.ts"
import * as Captive from "./Captive.ts"
import * as DynamicExports from "./DynamicExports.ts"
import { type ExportSpec, parseExportSpec } from "./ExportSpec.ts"
import * as ListenPlan from "./ListenPlan.ts"
import * as ParentWatch from "./ParentWatch.ts"
import * as PidFile from "./PidFile.ts"
import * as ObservabilityOptions from "./ObservabilityOptions.ts"
import * as ServiceOptions from "./ServiceOptions.ts"

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
  Options.withDescription("Listen on this Unix socket path instead of TCP; - for a private socket in a new temporary directory")
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
  Options.withDescription("Require client certificates signed by ca-cert.pem (X.509 clients; PSK clients prove their key)")
)
const tlsPsk = Options.file("tls-psk", { exists: "yes" }).pipe(
  Options.optional,
  Options.withDescription(
    "TLS-PSK key file in psktool's format, one username:hexkey per line; the user name is the client's identity " +
      "(with --tls-certificates too, X.509 and PSK clients share the port)"
  )
)

const handshakeTimeout = Options.float("handshake-timeout").pipe(
  Options.withDefault(10),
  Options.withDescription("Seconds a client may take to finish negotiating (TLS included) before it is disconnected; 0: no limit")
)
const idleTimeout = Options.float("idle-timeout").pipe(
  Options.withDefault(0),
  Options.withDescription("Seconds a connection may stay idle in transmission before it is closed; 0: never")
)
const maxConnections = Options.integer("max-connections").pipe(
  Options.withDefault(ServerConfig.defaults.maxConnections),
  Options.withDescription("Connections served at once; more are closed as they arrive")
)
const maxRequest = Options.text("max-request").pipe(
  Options.withDefault("64M"),
  Options.withDescription("Largest READ or WRITE payload accepted (e.g. 32M)")
)

const listenOptions = {
  port,
  host,
  socket,
  verbose,
  tlsMode,
  tlsCertificates,
  tlsVerifyPeer,
  tlsPsk,
  handshakeTimeout,
  idleTimeout,
  maxConnections,
  maxRequest,
  ...ServiceOptions.options,
  ...ObservabilityOptions.options
}
type Listen = ServiceOptions.ServiceOptions & ObservabilityOptions.ObservabilityOptions & {
  readonly handshakeTimeout: number
  readonly idleTimeout: number
  readonly maxConnections: number
  readonly maxRequest: string
  readonly port: number
  readonly host: string
  readonly socket: Option.Option<string>
  readonly verbose: boolean
  readonly tlsMode: "off" | "on" | "require"
  readonly tlsCertificates: Option.Option<string>
  readonly tlsVerifyPeer: boolean
  readonly tlsPsk: Option.Option<string>
}

const common = { ...listenOptions, exportName, description, readOnly }

const usageError = (message: string) => Effect.fail(new Error(message))

/** The TLS settings of the command line, loaded: certificates, pre-shared keys, or both. */
const tlsConfig = (options: Listen) =>
  Effect.gen(function*() {
    const certificates = Option.getOrUndefined(options.tlsCertificates)
    const pskFile = Option.getOrUndefined(options.tlsPsk)
    if (options.tlsMode === "off") {
      if (certificates !== undefined) return yield* usageError("--tls-certificates needs --tls on or --tls require")
      if (pskFile !== undefined) return yield* usageError("--tls-psk needs --tls on or --tls require")
      if (options.tlsVerifyPeer) return yield* usageError("--tls-verify-peer needs --tls on or --tls require")
      return undefined
    }
    if (certificates === undefined && pskFile === undefined) {
      return yield* usageError(`--tls ${options.tlsMode} needs --tls-certificates DIR or --tls-psk FILE`)
    }
    if (options.tlsVerifyPeer && certificates === undefined) {
      return yield* usageError("--tls-verify-peer needs --tls-certificates DIR (with ca-cert.pem)")
    }
    return yield* Tls.load({ mode: options.tlsMode, certificates, verifyPeer: options.tlsVerifyPeer, pskFile })
  })

/** Whether a listen address reaches only this machine. */
const isLoopback = (host: string): boolean =>
  host === "localhost" || host === "::1" || host.startsWith("127.") || host.startsWith("::ffff:127.")

/** The server settings of the command line. */
const serverConfig = (options: Listen, tls: Tls.TlsConfig | undefined) =>
  Effect.gen(function*() {
    const maxRequest = yield* Either.match(parseSize(options.maxRequest), {
      onLeft: (message) => usageError(`--max-request: ${message}`),
      onRight: Effect.succeed
    })
    if (options.maxConnections < 1) return yield* usageError("--max-connections must be at least 1")
    if (options.handshakeTimeout < 0 || options.idleTimeout < 0) return yield* usageError("timeouts cannot be negative")
    return ServerConfig.make({
      tls,
      maxRequest,
      maxConnections: options.maxConnections,
      handshakeTimeoutMillis: options.handshakeTimeout * 1000,
      idleTimeoutMillis: options.idleTimeout * 1000
    })
  })

/** An export to serve, and whether it was made read-only (for the line that announces it). */
interface Served {
  readonly export: Export.NbdExport
  /** The driver at the bottom of the stack. */
  readonly driver: string
  readonly readOnly: boolean
  /** Where the export came from when exports may appear while the server runs (`s3-bucket`). */
  readonly source?: Export.ExportSource | undefined
}

/**
 * Serves exports until interrupted, printing their URIs; with `--run`, until the command
 * exits, whose status becomes the process's exit code.
 */
const serveExports = (options: Listen, served: ReadonlyArray<Served>) => {
  const exports = served.map((s) => s.export)
  const fixed = served.filter((s) => s.source === undefined).map((s) => s.export)
  const sources = [...new Set(served.flatMap((s) => s.source === undefined ? [] : [s.source]))]
  return Effect.gen(function*() {
    const tls = yield* tlsConfig(options)
    const config = yield* serverConfig(options, tls)
    const plan = yield* ListenPlan.resolve(options)
    if (!plan.activated && Option.isNone(options.socket) && tls === undefined && !isLoopback(options.host)) {
      yield* Effect.logWarning(
        `listening on ${options.host} without TLS: any host that can reach it can read and write the exports (--tls require)`
      )
    }
    if (options.exitWithParent) yield* ParentWatch.exitWithParent
    const status = yield* Effect.gen(function*() {
      const server = yield* Server.NbdServer
      if (Option.isSome(options.pidFile)) yield* PidFile.write(options.pidFile.value)
      const tlsRequired = tls?.mode === "require"
      for (const { driver, export: exp, readOnly } of served) {
        for (const address of server.addresses) {
          const line = `effect-nbd: serving ${driver} export${readOnly ? " (read-only)" : ""} at ` +
            Server.uri(address, exp.name, { tls: tlsRequired })
          // In captive mode standard output belongs to the command.
          yield* Option.isSome(options.run) ? Effect.logDebug(line) : Console.log(line)
        }
      }
      if (Option.isNone(options.run)) return yield* Effect.never
      return yield* Captive.run(options.run.value, Captive.environment(server.address, exports[0]!.name, { tls: tlsRequired }))
    }).pipe(
      Effect.provide(
        ObservabilityOptions.withExporter(options, Server.layer(plan.listen, config)).pipe(
          Layer.provide(Layer.succeed(Export.ExportRegistry, Export.ExportRegistry.withSources(fixed, sources)))
        )
      ),
      Effect.catchTag("ListenError", (e) => usageError(e.message))
    )
    // The server has stopped; the process exits with the command's status.
    process.exitCode = status
  }).pipe(
    Logger.withMinimumLogLevel(options.verbose ? LogLevel.Debug : LogLevel.Info),
    // Logs go to standard error (as --log-format says); standard output carries only the URIs served.
    Effect.provide(ObservabilityOptions.layer(options))
  )
}

const filtersOption = Options.text("filter").pipe(
  Options.repeated,
  Options.withDescription(
    "Stack a filter: NAME or NAME:KEY=VALUE,... (repeatable; the first given is nearest the client), " +
      `one of ${Catalog.filters.map((f) => f.name).join(", ")}`
  )
)

const orUsage = <A>(either: Either.Either<A, { readonly message: string }>) =>
  Either.match(either, { onLeft: (e) => usageError(e.message), onRight: Effect.succeed })

/** A failure while building a driver or filter, as a one-line usage error. */
const buildError = (e: unknown) => new Error(typeof e === "object" && e !== null && "message" in e ? String(e.message) : String(e))

/**
 * Builds an export's driver and filters (as a `serve` spec names them) in the scope of the
 * command; a driver serving several exports (`dir`) gives one per name, each with its own
 * filters, named `NAME/FILE` (or `FILE` when the spec's name is empty).
 */
const buildExport = (request: ExportSpec) =>
  Effect.gen(function*() {
    const plugin = yield* orUsage(Catalog.driver(request.driver))
    const options = { readOnly: request.readOnly }
    const filters = yield* Effect.forEach(request.filters, (spec) => orUsage(Catalog.filter(spec)))
    if (plugin.exportSource !== undefined) {
      const make = yield* orUsage(plugin.exportSource(request.argument, request.parameters, options))
      const served = { name: request.name, description: request.description, readOnly: request.readOnly, filters }
      const source = DynamicExports.make(yield* Effect.mapError(make, buildError), served, yield* Effect.scope)
      const found = yield* source.list
      return found.map((exp) => ({ export: exp, driver: plugin.name, readOnly: request.readOnly, source }))
    }
    const named = plugin.exports === undefined
      ? yield* Effect.map(orUsage(plugin.make(request.argument, request.parameters, options)), (make) =>
        Effect.map(make, (driver) => [{ name: request.name, driver }]))
      : yield* Effect.map(orUsage(plugin.exports(request.argument, request.parameters, options)), (make) =>
        Effect.map(make, (all) =>
          all.map(({ driver, name }) => ({ name: request.name === "" ? name : `${request.name}/${name}`, driver }))))
    const drivers = yield* Effect.mapError(named, buildError)
    return yield* Effect.forEach(drivers, ({ driver, name }) =>
      Effect.map(Effect.mapError(Driver.stack(driver, filters), buildError), (stacked) => ({
        export: Export.make(stacked, { name, description: request.description, readOnly: request.readOnly }),
        driver: plugin.name,
        readOnly: request.readOnly
      })))
  })

/** Key=value arguments after a driver's main argument. */
const parametersOf = (items: ReadonlyArray<string>) =>
  Effect.forEach(items, (item) => {
    const eq = item.indexOf("=")
    return eq > 0 ? Effect.succeed([item.slice(0, eq), item.slice(eq + 1)] as const) : usageError(`'${item}' is not KEY=VALUE`)
  }).pipe(Effect.map((pairs) => new Map(pairs)))

/** The subcommand of one driver: `effect-nbd DRIVER ARGUMENT [KEY=VALUE...] [options]`. */
const driverCommand = (plugin: DriverPlugin) =>
  Command.make(
    plugin.name,
    {
      ...common,
      filters: filtersOption,
      argument: Args.text({ name: plugin.argument?.name ?? "argument" }).pipe(
        Args.withDescription(plugin.argument?.description ?? "")
      ),
      parameters: Args.text({ name: "KEY=VALUE" }).pipe(
        Args.repeated,
        Args.withDescription(
          plugin.parameters.length === 0
            ? "none"
            : plugin.parameters.map((p) => `${p.name}=${p.default === undefined ? "" : ` (default ${p.default})`}`).join(", ")
        )
      )
    },
    (options) =>
      Effect.scoped(Effect.gen(function*() {
        const parameters = yield* parametersOf(options.parameters)
        const served = yield* buildExport({
          name: options.exportName,
          driver: plugin.name,
          argument: options.argument,
          parameters,
          filters: options.filters,
          readOnly: options.readOnly,
          description: Option.getOrUndefined(options.description)
        }).pipe(Effect.provide(LogFormat.layer(options.logFormat))) // drivers log to standard error too
        return yield* serveExports(options, served)
      }))
  ).pipe(Command.withDescription(`Serve ${plugin.summary}`))

const serve = Command.make(
  "serve",
  {
    ...listenOptions,
    filters: filtersOption,
    exports: Args.text({ name: "export" }).pipe(
      Args.atLeast(1),
      Args.withDescription(
        "NAME=DRIVER:ARGUMENT[,read-only][,KEY=VALUE...][,filter=NAME:K=V;K=V...][,description=TEXT], " +
          "e.g. disk=file:/srv/disk.img,filter=cow scratch=memory:1T; the first export is also the default one; " +
          "--filter applies to every export, outside its own filters"
      )
    )
  },
  (options) =>
    Effect.scoped(Effect.gen(function*() {
      const specs = yield* Effect.forEach(options.exports, (text) =>
        Either.match(parseExportSpec(text), { onLeft: usageError, onRight: Effect.succeed }))
      const names = new Set(specs.map((spec) => spec.name))
      if (names.size !== specs.length) return yield* usageError("two exports have the same name")
      const served = yield* Effect.forEach(specs, (spec) =>
        buildExport({ ...spec, filters: [...options.filters, ...spec.filters] })).pipe(
          Effect.provide(LogFormat.layer(options.logFormat)) // drivers log to standard error too
        )
      return yield* serveExports(options, served.flat())
    }))
).pipe(Command.withDescription("Serve several exports, each a driver with its own filters, from one server"))

/** The root command. */
export const command = Command.make("effect-nbd").pipe(
  Command.withDescription("A Network Block Device (NBD) server"),
  Command.withSubcommands([serve, ...Catalog.drivers.map(driverCommand)])
)

/** Runs the command line on `argv`. */
export const run = Command.run(command, { name: "effect-nbd", version: "0.1.0" })
