/**
 * Entry point of the `effect-nbd` command.
 *
 * @since 0.1.0
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Runtime from "@effect/platform/Runtime"
import * as Cause from "effect/Cause"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import { run } from "./Command.ts"

run(process.argv).pipe(
  // Usage and start-up errors are reported as one line; errors of the command line's own
  // parsing (not instances of Error) were already printed by @effect/cli.
  Effect.tapError((error) => error instanceof Error ? Console.error(`effect-nbd: ${error.message}`) : Effect.void),
  // A defect (a bug, or a module that failed to load) is reported whole, not only by the exit status.
  Effect.tapDefect((cause) => Console.error(`effect-nbd: unexpected error: ${Cause.pretty(cause)}`)),
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain({
    disableErrorReporting: true,
    disablePrettyLogger: true,
    // A command that ends on its own may have set its exit status (`--run` passes on the command's).
    teardown: (exit, onExit) =>
      Runtime.defaultTeardown(exit, (code) => onExit(code !== 0 ? code : Number(process.exitCode ?? 0)))
  })
)
