// Builds the package into dist/ (npm run build, and npm install through prepare): JavaScript and declarations compiled from src/ by tsc
// (tsconfig.build.json), starting from an empty dist/ so that nothing stale is shipped.
// tsc rewrites the `.ts` import paths of the sources to `.js` in the JavaScript it emits but
// not in the declarations; they are rewritten here too, so that every tool reading the
// shipped declarations resolves them as it resolves the JavaScript beside them.
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
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
