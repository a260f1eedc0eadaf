/**
 * Which meta contexts a LIST_META_CONTEXT or SET_META_CONTEXT query names, among those
 * an export offers. The query syntax, as the spec leaves it to servers:
 * - an exact name (`base:allocation`, `qemu:dirty-bitmap:daily`) names that context;
 * - a name ending in `:` (`base:`, `qemu:`, `qemu:dirty-bitmap:`) names every context it
 *   prefixes, in LIST only (in SET it selects nothing, as the spec recommends);
 * - LIST with no query lists every context; queries in unknown namespaces match nothing.
 *
 * @since 0.2.0
 */
import { BASE_ALLOCATION } from "../protocol/Constants.ts"

/** The contexts a LIST query names, in the export's order. */
export const list = (queries: ReadonlyArray<string>, offered: ReadonlyArray<string>): Array<string> =>
  queries.length === 0
    ? [...offered]
    : offered.filter((name) => queries.some((q) => q === name || (q.endsWith(":") && name.startsWith(q))))

/** The contexts a SET query selects (exact names only), in the export's order, each once. */
export const select = (queries: ReadonlyArray<string>, offered: ReadonlyArray<string>): Array<string> =>
  offered.filter((name) => queries.includes(name))

/** Every context of a handle: `base:allocation` first, then its own. */
export const offeredBy = (handle: { readonly contexts?: ReadonlyArray<{ readonly name: string }> | undefined }) => [
  BASE_ALLOCATION,
  ...(handle.contexts ?? []).map((context) => context.name).filter((name) => name !== BASE_ALLOCATION)
]
