/**
 * Real NBD client tools for interop tests. On a developer machine without them the
 * tests are skipped with a message saying what to install; in CI (`CI=true`) a missing
 * tool fails the run.
 */
import { execFile, spawnSync } from "node:child_process"
import { promisify } from "node:util"

const execFileAsync = promisify(execFile)

/** Debian's interpreter: the only one that can import the libnbd module. */
export const SYSTEM_PYTHON = "/usr/bin/python3"

const has = (command: string, args: ReadonlyArray<string>): boolean =>
  spawnSync(command, args, { stdio: "ignore" }).status === 0

/** Whether every named tool is available; throws in CI when one is missing. */
export const available = (tools: ReadonlyArray<string>): boolean => {
  const missing = tools.filter((tool) =>
    tool === "python3-libnbd" ? !has(SYSTEM_PYTHON, ["-c", "import nbd"]) : !has("sh", ["-c", `command -v ${tool}`])
  )
  if (missing.length === 0) return true
  const message = `missing NBD client tools: ${missing.join(", ")}; ` +
    "install them with: apt-get install -y libnbd-bin python3-libnbd qemu-utils openssl"
  if (process.env.CI === "true") throw new Error(message)
  console.warn(`skipping interop tests: ${message}`)
  return false
}

/** Runs a command and returns its standard output; rejects on a non-zero exit. */
export const run = async (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly input?: string; readonly env?: NodeJS.ProcessEnv } = {}
): Promise<string> => {
  const child = execFileAsync(command, [...args], {
    maxBuffer: 256 * 1024 * 1024,
    encoding: "utf8",
    env: { ...process.env, ...options.env }
  })
  if (options.input !== undefined) {
    child.child.stdin?.end(options.input)
  }
  const { stdout } = await child
  return stdout
}
