/**
 * The command-line options for running as a service or around a command: `--run`,
 * `--exit-with-parent` and `--pid-file` (socket activation needs none: it comes from the
 * environment).
 *
 * @since 0.1.0
 */
import * as Options from "@effect/cli/Options"
import type * as Option from "effect/Option"

/**
 * `--run CMD`: captive mode.
 *
 * @since 0.1.0
 */
export const run = Options.text("run").pipe(
  Options.withPseudoName("CMD"),
  Options.optional,
  Options.withDescription(
    "Run CMD in /bin/sh once listening, with $uri (also $nbd), $port, $unixsocket and $exportname set; " +
      "stop when it exits and exit with its status (use with -U - for a private socket)"
  )
)

/**
 * `--exit-with-parent`.
 *
 * @since 0.1.0
 */
export const exitWithParent = Options.boolean("exit-with-parent").pipe(
  Options.withDescription("Stop when the process that started this one exits")
)

/**
 * `--pid-file FILE`.
 *
 * @since 0.1.0
 */
export const pidFile = Options.text("pid-file").pipe(
  Options.withPseudoName("FILE"),
  Options.optional,
  Options.withDescription("Write the process id to FILE once listening; the file is removed on exit")
)

/**
 * The options, to spread into a command's options.
 *
 * @since 0.1.0
 */
export const options = { run, exitWithParent, pidFile }

/**
 * Their parsed values.
 *
 * @since 0.1.0
 */
export interface ServiceOptions {
  readonly run: Option.Option<string>
  readonly exitWithParent: boolean
  readonly pidFile: Option.Option<string>
}
