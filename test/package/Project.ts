/**
 * A throwaway consumer project for the package tests: `npm pack` of this repository, the
 * tarball installed into a fresh temporary directory with its dependencies from the
 * registry, and the commands and servers run there.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { ROOT, withTimeout } from "../support/Cli.ts"

const MiB = 1024 * 1024

/**
 * The environment for nested npm and node processes: without the `npm_*` variables that a
 * running `npm test` sets (they would steer the nested npm towards this repository) and
 * without `NODE_OPTIONS` (nothing may be preloaded: the package must run on plain Node.js).
 */
export const cleanEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.toLowerCase().startsWith("npm_") && name !== "NODE_OPTIONS")
  )

export interface Result {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

/** Runs a command to completion in `cwd`; resolves with its exit code and output. */
export const exec = (command: string, args: ReadonlyArray<string>, cwd: string, timeout: number): Promise<Result> =>
  new Promise((resolve, reject) => {
    const options = { cwd, env: cleanEnv(), encoding: "utf8", maxBuffer: 64 * MiB, timeout, killSignal: "SIGKILL" } as const
    execFile(command, [...args], options, (error, stdout, stderr) => {
      if (error === null) resolve({ code: 0, stdout, stderr })
      else if (typeof error.code === "number") resolve({ code: error.code, stdout, stderr })
      else reject(new Error(`${command} ${args.join(" ")}: ${error.message}\nstdout: ${stdout}\nstderr: ${stderr}`))
    })
  })

/** Runs a command that must succeed; rejects with its output otherwise. */
export const execOk = async (command: string, args: ReadonlyArray<string>, cwd: string, timeout: number) => {
  const result = await exec(command, args, cwd, timeout)
  if (result.code !== 0) {
    const output = `stdout: ${result.stdout}\nstderr: ${result.stderr}`
    throw new Error(`${command} ${args.join(" ")} exited with ${result.code}\n${output}`)
  }
  return result
}

/** A long-running process in its own process group (so that `npx` and what it starts stop together). */
export interface Running {
  readonly child: ChildProcess
  readonly output: () => string
  readonly stop: () => Promise<void>
}

/** Starts `command` and waits until its output matches `ready`; returns the match too. */
export const start = async (
  command: string,
  args: ReadonlyArray<string>,
  cwd: string,
  ready: RegExp,
  timeout = 60_000
): Promise<{ readonly running: Running; readonly match: RegExpExecArray }> => {
  const child = spawn(command, [...args], { cwd, env: cleanEnv(), detached: true, stdio: ["ignore", "pipe", "pipe"] })
  let output = ""
  const exited = new Promise<void>((resolve) => child.on("close", () => resolve()))
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => (output += chunk))
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (output += chunk))
  const signal = (name: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid!, name)
      } catch {
        // already gone
      }
    }
  }
  const stop = async () => {
    signal("SIGTERM")
    await withTimeout(exited, 10_000, `${command} after SIGTERM`).catch(async () => {
      signal("SIGKILL")
      await withTimeout(exited, 10_000, `${command} after SIGKILL`).catch(() => undefined)
    })
  }
  const running: Running = { child, output: () => output, stop }
  const started = Date.now()
  for (;;) {
    const match = ready.exec(output)
    if (match !== null) return { running, match }
    if (child.exitCode !== null || child.signalCode !== null || Date.now() - started > timeout) {
      await stop()
      throw new Error(`${command} ${args.join(" ")} did not print ${ready} within ${timeout} ms\noutput: ${output}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** The first `ts` code block of the README's "Library" section: the library example. */
export const readmeLibraryExample = (): string => {
  const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8")
  const section = readme.slice(readme.indexOf("\n## Library\n"))
  const block = /```ts\n([\s\S]*?)```/.exec(section)
  if (block === null) throw new Error("README: no ts code block in the Library section")
  return block[1]!
}

/** This repository's package.json. */
export const manifest = (): {
  readonly exports: Record<string, unknown>
  readonly devDependencies: Record<string, string>
} => JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"))

/** The package subpaths (`effect-nbd`, `effect-nbd/NbdServer`, ...), package.json left out. */
export const subpaths = (): Array<string> =>
  Object.keys(manifest().exports)
    .filter((key) => key !== "./package.json")
    .map((key) => (key === "." ? "effect-nbd" : `effect-nbd/${key.slice(2)}`))

/** What a directory holds, recursively, folders too (a deleted file changes its folder's time). */
const entriesIn = (dir: string): Array<string> =>
  fs.existsSync(dir) ? fs.readdirSync(dir, { recursive: true, encoding: "utf8" }).map((file) => path.join(dir, file)) : []

/**
 * Whether dist/ was built after the last change of what it is built from (CI's `npm ci` has
 * just built it); if not, `npm pack` builds it again through `prepare`.
 */
const distIsFresh = (): boolean => {
  const built = entriesIn(path.join(ROOT, "dist")).map((file) => fs.statSync(file).mtimeMs)
  const inputs = [
    path.join(ROOT, "src"),
    ...entriesIn(path.join(ROOT, "src")),
    ...["package.json", "tsconfig.json", "tsconfig.build.json", ".ci/build.js"].map((file) => path.join(ROOT, file))
  ].map((file) => fs.statSync(file).mtimeMs)
  return built.length > 0 && Math.min(...built) > Math.max(...inputs)
}

/** A packed and installed consumer project. */
export interface Project {
  /** The temporary directory holding the tarball and the project. */
  readonly root: string
  /** The project directory (its node_modules holds effect-nbd and its dependencies). */
  readonly dir: string
  readonly tarball: string
}

/**
 * Packs this repository (`npm pack` runs `prepare`, which builds dist/, unless dist/ is
 * already up to date) and installs the
 * tarball, TypeScript and the types of Node.js and ws into a new project. The caller
 * removes `root`.
 */
export const packAndInstall = async (): Promise<Project> => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "effect-nbd-package-"))
  const packs = path.join(root, "pack")
  const dir = path.join(root, "consumer")
  fs.mkdirSync(packs)
  fs.mkdirSync(dir)
  try {
    const build = distIsFresh() ? ["--ignore-scripts"] : []
    await execOk("npm", ["pack", ...build, "--pack-destination", packs, "--loglevel=error"], ROOT, 240_000)
    const [tarball] = fs.readdirSync(packs).filter((name) => name.endsWith(".tgz"))
    if (tarball === undefined) throw new Error("npm pack wrote no tarball")
    fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }))
    const dev = manifest().devDependencies
    await execOk("npm", [
      "install",
      "--no-audit",
      "--no-fund",
      "--prefer-offline",
      "--loglevel=error",
      path.join(packs, tarball),
      `typescript@${dev["typescript"]}`,
      `@types/node@${dev["@types/node"]}`,
      // @effect/platform-node's declarations import "ws" without depending on its types.
      "@types/ws@8.18.2"
    ], dir, 240_000)
    return { root, dir, tarball: path.join(packs, tarball) }
  } catch (error) {
    fs.rmSync(root, { recursive: true, force: true })
    throw error
  }
}
