import { describe, expect, it } from "@effect/vitest"
import { readFileSync } from "node:fs"
import { setServerSession, spawnServer, stop } from "../../bench/proc.ts"

/** The session id of a process (field 6 of /proc/PID/stat, after the command's parentheses). */
const sessionOf = (pid: number | "self"): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[3])
}

/** Starts `sleep` as a bench server and gives its session, stopping it afterwards. */
const sessionOfServer = async (): Promise<{ readonly session: number; readonly pid: number }> => {
  const child = spawnServer("sleep", ["30"])
  try {
    const pid = child.pid!
    return { session: sessionOf(pid), pid }
  } finally {
    await stop(child)
  }
}

describe("bench servers", () => {
  it("run each in a session of its own, or in the bench's with --shared-session", async () => {
    try {
      const own = await sessionOfServer()
      expect(own.session).toBe(own.pid)
      expect(own.session).not.toBe(sessionOf("self"))
      setServerSession("shared")
      const shared = await sessionOfServer()
      expect(shared.session).toBe(sessionOf("self"))
    } finally {
      setServerSession("own")
    }
  })
})
