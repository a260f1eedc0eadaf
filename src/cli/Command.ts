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
import * as MemoryDriver from "../drivers/Memory.ts"
import * as Export from "../Export.ts"
import { DEFAULT_PORT } from "../protocol/Constants.ts"
import * as Server from "../server/Server.ts"
import { formatSize, parseSize } from "./Size.ts"

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

const common = { port, host, socket, exportName, description, readOnly, verbose }
type Common = {
  readonly port: number
  readonly host: string
  readonly socket: Option.Option<string>
  readonly exportName: string
  readonly description: Option.Option<string>
  readonly readOnly: boolean
  readonly verbose: boolean
}

/** Serves one export until interrupted, printing its URI. */
const serveExport = (options: Common, driver: NbdDriverShape) => {
  const listen: Server.ListenOptions = Option.match(options.socket, {
    onNone: () => ({ host: options.host, port: options.port }),
    onSome: (path) => ({ path })
  })
  const exports = Export.ExportRegistry.layer([
    Export.make(driver, {
      name: options.exportName,
      description: Option.getOrUndefined(options.description),
      readOnly: options.readOnly
    })
  ])
  return Effect.gen(function*() {
    const server = yield* Server.NbdServer
    yield* Console.log(`effect-nbd: serving ${driver.name} export at ${Server.uri(server.address, options.exportName)}`)
    return yield* Effect.never
  }).pipe(
    Effect.provide(Server.layer(listen).pipe(Layer.provide(exports))),
    Logger.withMinimumLogLevel(options.verbose ? LogLevel.Debug : LogLevel.Info)
  )
}

const memory = Command.make(
  "memory",
  {
    ...common,
    size: Args.text({ name: "size" }).pipe(Args.withDescription("Export size, e.g. 1G, 512M, 1T (sparse: costs nothing until written)"))
  },
  (options) =>
    Effect.gen(function*() {
      const size = yield* Either.match(parseSize(options.size), {
        onLeft: (message) => Effect.fail(new Error(message)),
        onRight: Effect.succeed
      })
      if (size > MemoryDriver.MAX_SIZE) return yield* Effect.fail(new Error(`size ${options.size} is too large`))
      const driver = yield* MemoryDriver.make({
        size,
        description: Option.getOrElse(options.description, () => `${formatSize(size)} in-memory export`)
      })
      return yield* serveExport(options, driver)
    })
).pipe(Command.withDescription("Serve a sparse in-memory export of the given size"))

/** The root command. */
export const command = Command.make("effect-nbd").pipe(
  Command.withDescription("A Network Block Device (NBD) server"),
  Command.withSubcommands([memory])
)

/** Runs the command line on `argv`. */
export const run = Command.run(command, { name: "effect-nbd", version: "0.1.0" })
