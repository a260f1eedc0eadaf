/**
 * The package as a user gets it: `npm pack` (which builds dist/), the tarball installed into
 * a fresh project with its dependencies from the registry, and then, with plain Node.js:
 * the README's library example serves an export that nbdinfo reads, every subpath loads and
 * an in-process round trip works, a consumer file type-checks against the shipped
 * declarations (tsc: strict, module NodeNext, nothing else), and `npx effect-nbd memory 64M`
 * serves from the compiled command.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { servedLines } from "../support/Cli.ts"
import { available } from "../support/Tools.ts"
import {
  execOk,
  packAndInstall,
  type Project,
  readmeLibraryExample,
  type Running,
  start,
  subpaths
} from "./Project.ts"

const MiB = 1024 * 1024
const hasTools = available(["nbdinfo", "npm", "tar"])

/** Reads an export's size with nbdinfo. */
const exportSize = async (uri: string, cwd: string): Promise<number> => {
  const { stdout } = await execOk("nbdinfo", ["--json", uri], cwd, 30_000)
  return JSON.parse(stdout).exports[0]["export-size"]
}

/** A consumer file using the subpaths with their types; wrong uses must be refused. */
const CONSUMER_TS = `
import { Either, Layer } from "effect"
import { Driver, NbdDriver } from "effect-nbd"
import * as CowFilter from "effect-nbd/CowFilter"
import * as Errors from "effect-nbd/Errors"
import { ExportRegistry } from "effect-nbd/Export"
import * as MemoryDriver from "effect-nbd/MemoryDriver"
import * as NbdServer from "effect-nbd/NbdServer"
import * as Size from "effect-nbd/Size"
import * as Testing from "effect-nbd/Testing"

const disk: Layer.Layer<NbdDriver> = CowFilter.layer().pipe(Layer.provide(MemoryDriver.layer({ size: 64 * 1024 * 1024 })))
const exports: Layer.Layer<ExportRegistry> = ExportRegistry.layerDriver({ name: "disk" }).pipe(Layer.provide(disk))
export const server: Layer.Layer<NbdServer.NbdServer, unknown> = NbdServer.layer({ host: "127.0.0.1", port: 0 }).pipe(
  Layer.provide(exports)
)
export const size: Either.Either<number, string> = Size.parseSize("64M")
export const failure: Errors.ProtocolError = Errors.protocolError("EIO", "example")
export const inProcess = Testing.exportDriver(MemoryDriver.layer({ size: 1024 * 1024 }))
export const shape: Driver.NbdDriverShape["name"] = "memory"

// @ts-expect-error: NBD has no ENOENT
export const unknownErrno = Errors.protocolError("ENOENT", "example")
// @ts-expect-error: the memory driver needs a size
export const noSize = MemoryDriver.layer({})
`

/** Loads every subpath with plain Node.js and writes and reads back through the in-process server. */
const RUNTIME_MJS = (paths: ReadonlyArray<string>) => `
import { Effect } from "effect"
import * as MemoryDriver from "effect-nbd/MemoryDriver"
import * as Testing from "effect-nbd/Testing"

const loaded = []
for (const name of ${JSON.stringify(paths)}) {
  await import(name)
  loaded.push(name)
}
const roundTrip = Effect.gen(function*() {
  const client = yield* Testing.connect()
  yield* client.write(4096, new Uint8Array(512).fill(7))
  const data = yield* client.read(4096, 512)
  return data.length === 512 && data.every((byte) => byte === 7)
}).pipe(Effect.scoped, Effect.provide(Testing.exportDriver(MemoryDriver.layer({ size: 1024 * 1024 }))))
console.log(JSON.stringify({ loaded, roundTrip: await Effect.runPromise(roundTrip) }))
`

describe.skipIf(!hasTools)("the packed package in a fresh project", () => {
  let project: Project | undefined
  const running = new Set<Running>()
  const dir = () => project!.dir

  beforeAll(async () => {
    project = await packAndInstall()
  }, 480_000)

  afterAll(async () => {
    await Promise.all([...running].map((process) => process.stop()))
    if (project !== undefined) fs.rmSync(project.root, { recursive: true, force: true })
  }, 60_000)

  it("ships only dist/, bin/, the README and package.json, with JavaScript declarations", () => {
    const files = execFileSync("tar", ["-tzf", project!.tarball], { encoding: "utf8" }).trim().split("\n")
    const unexpected = files.filter((file) => !/^package\/(dist\/|bin\/|README\.md$|LICENSE|package\.json$)/.test(file))
    expect(unexpected).toEqual([])
    expect(files).toContain("package/dist/index.js")
    expect(files).toContain("package/dist/index.d.ts")
    expect(files).toContain("package/bin/effect-nbd.cjs")
    expect(files).toContain("package/bin/thread-pool.cjs")
    expect(files).toContain("package/bin/young-generation.cjs")
    expect(files.filter((file) => file.endsWith(".ts") && !file.endsWith(".d.ts"))).toEqual([])
    const installed = path.join(dir(), "node_modules", "effect-nbd", "dist")
    const declarations = fs.readdirSync(installed, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(".d.ts"))
    const importsTs = (file: string) => /["']\.{1,2}\/[^"']*\.ts["']/.test(fs.readFileSync(path.join(installed, file), "utf8"))
    const tsPaths = declarations.filter(importsTs)
    expect(tsPaths).toEqual([])
    // Nothing that transpiles TypeScript is installed: the package runs as JavaScript.
    expect(fs.existsSync(path.join(dir(), "node_modules", "tsx"))).toBe(false)
  })

  it("runs the README's library example with plain node, and nbdinfo reads its export", async () => {
    const example = readmeLibraryExample()
    expect(example).toContain("port: 10810")
    // Port 0: the system picks a free port, which the example prints in its URI.
    fs.writeFileSync(path.join(dir(), "example.mjs"), example.replace("port: 10810", "port: 0"))
    const { match, running: server } = await start("node", ["example.mjs"], dir(), /listening at (nbd:\/\/\S+)/)
    running.add(server)
    expect(await exportSize(match[1]!, dir())).toBe(64 * MiB)
    await server.stop()
  }, 120_000)

  it("loads every subpath with plain node and serves a client in process", async () => {
    const paths = subpaths()
    fs.writeFileSync(path.join(dir(), "runtime.mjs"), RUNTIME_MJS(paths))
    const { stdout } = await execOk("node", ["runtime.mjs"], dir(), 60_000)
    const result = JSON.parse(stdout.trim().split("\n").at(-1)!)
    expect(result.loaded).toEqual(paths)
    expect(result.roundTrip).toBe(true)
  }, 120_000)

  it("type-checks a consumer and the README example against the shipped declarations", async () => {
    const imports = subpaths().map((name, i) => `import * as Module${i} from "${name}"`)
    const all = `${imports.join("\n")}\nexport const modules = [${imports.map((_, i) => `Module${i}`).join(", ")}]\n`
    fs.writeFileSync(path.join(dir(), "subpaths.ts"), all)
    fs.writeFileSync(path.join(dir(), "consumer.ts"), CONSUMER_TS)
    fs.writeFileSync(path.join(dir(), "example.ts"), readmeLibraryExample())
    const compilerOptions = { strict: true, module: "NodeNext", target: "ES2022", noEmit: true }
    const tsconfig = { compilerOptions, include: ["*.ts"] }
    fs.writeFileSync(path.join(dir(), "tsconfig.json"), JSON.stringify(tsconfig, null, 2))
    const tsc = path.join(dir(), "node_modules", "typescript", "bin", "tsc")
    const { stdout } = await execOk("node", [tsc, "-p", "."], dir(), 180_000)
    expect(stdout).toBe("")
  }, 240_000)

  it("serves `npx effect-nbd memory 64M` from the compiled command, and nbdinfo reads it", async () => {
    const args = ["effect-nbd", "memory", "64M", "--port", "0"]
    const { running: cli } = await start("npx", args, dir(), /effect-nbd: serving .*\n/)
    running.add(cli)
    const [served] = servedLines(cli.output())
    expect(served?.driver).toBe("memory")
    expect(await exportSize(served!.uri, dir())).toBe(64 * MiB)
    await cli.stop()
  }, 120_000)

  it("serves a sparse file from the bundled command, its holes found through koffi", async () => {
    const image = path.join(dir(), "sparse.img")
    const file = fs.openSync(image, "w")
    fs.writeSync(file, Buffer.alloc(MiB, 1), 0, MiB, 4 * MiB)
    fs.ftruncateSync(file, 16 * MiB)
    fs.closeSync(file)
    const args = ["effect-nbd", "file", image, "--port", "0", "--read-only"]
    const { running: cli } = await start("npx", args, dir(), /effect-nbd: serving .*\n/)
    running.add(cli)
    const [served] = servedLines(cli.output())
    const { stdout } = await execOk("nbdinfo", ["--map", "--json", served!.uri], dir(), 30_000)
    const data = JSON.parse(stdout).filter((extent: { type: number }) => (extent.type & 1) === 0)
    expect(data).toEqual([expect.objectContaining({ offset: 4 * MiB, length: MiB })])
    await cli.stop()
  }, 120_000)
})
