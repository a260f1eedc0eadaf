/**
 * Finding the keys of a sparse map (pages, blocks) inside a range, walking the range or
 * the map, whichever is smaller: a range of a sparse terabyte answers at once.
 *
 * @since 0.2.0
 */

/** Keys from `first` to `last - 1` that are in `map`, ascending, without walking a huge range. */
export const keysIn = (map: ReadonlyMap<number, unknown>, first: number, last: number): Array<number> => {
  const found: Array<number> = []
  if (last - first <= map.size) {
    for (let index = first; index < last; index++) if (map.has(index)) found.push(index)
    return found
  }
  for (const index of map.keys()) if (index >= first && index < last) found.push(index)
  return found.sort((a, b) => a - b)
}
