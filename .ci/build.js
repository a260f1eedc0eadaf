// Builds the package into dist/ (npm run build, and npm install through prepare): JavaScript and declarations compiled from src/ by tsc
// (tsconfig.build.json), starting from an empty dist/ so that nothing stale is shipped; then
// the command (bin/effect-nbd.cjs) bundled into dist/command/.
// tsc rewrites the `.ts` import paths of the sources to `.js` in the JavaScript it emits but
// not in the declarations; they are rewritten here too, so that every tool reading the
// shipped declarations resolves them as it resolves the JavaScript beside them.
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as esbuild from "esbuild"
import { createRequire } from "node:module"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const dist = path.join(root, "dist")
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc")

/** `from "./x.ts"`, `import("../y.ts")`: a relative specifier ending in `.ts`, in quotes. */
const RELATIVE_TS = /(["'])(\.{1,2}\/[^"'\n]*?)\.ts\1/g

const declarations = (dir) =>
  fs.readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile() && entry.name.endsWith(".d.ts"))
    .map((entry) => path.join(entry.parentPath ?? entry.path, entry.name))

fs.rmSync(dist, { recursive: true, force: true })
try {
  execFileSync(process.execPath, [tsc, "-p", path.join(root, "tsconfig.build.json")], { cwd: root, stdio: "inherit" })
} catch {
  console.error("effect-nbd build: tsc failed (see the errors above)")
  process.exit(1)
}
for (const file of declarations(dist)) {
  const text = fs.readFileSync(file, "utf8")
  const rewritten = text.replace(RELATIVE_TS, "$1$2.js$1")
  if (rewritten !== text) fs.writeFileSync(file, rewritten)
}

// The command, bundled from the compiled entry point: Effect and the rest of its code in a
// few files, with what it does not use left out. Loading the library's modules one by one
// (Schema alone pulls in fast-check) held 109 MiB at start and took 1 s; the bundle holds
// 66 MiB and starts in 0.35 s. Code reached only through `import()` (S3, tracing, the
// metrics endpoint) stays in chunks loaded when used. Left to node_modules: koffi (a
// native addon), and the AWS SDK and OpenTelemetry, large dependencies loaded on demand.
try {
  await esbuild.build({
    entryPoints: [path.join(dist, "cli", "main.js")],
    outdir: path.join(dist, "command"),
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node20",
    external: ["koffi", "@aws-sdk/*", "@opentelemetry/*"],
    // Bundled CommonJS packages (ws) require Node's modules: give each chunk a require.
    banner: { js: `import { createRequire as bundleRequire } from "node:module"; const require = bundleRequire(import.meta.url);` },
    logLevel: "error"
  })
} catch {
  console.error("effect-nbd build: bundling the command failed (see the errors above)")
  process.exit(1)
}
