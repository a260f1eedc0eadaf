/**
 * Payloads carried by option requests and option replies.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"
import * as Binary from "./Binary.ts"
import { Info } from "./Constants.ts"

/** Data of `NBD_OPT_INFO` and `NBD_OPT_GO`: an export name and the info types asked for. */
export const InfoRequest = Binary.struct({
  name: Binary.prefixedString(Binary.u32),
  requests: Binary.array(Binary.u16, Binary.u16)
})
export type InfoRequest = typeof InfoRequest.Type

/** Data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`. */
export const MetaContextRequest = Binary.struct({
  name: Binary.prefixedString(Binary.u32),
  queries: Binary.array(Binary.u32, Binary.prefixedString(Binary.u32), 0x10000)
})
export type MetaContextRequest = typeof MetaContextRequest.Type

/** `NBD_REP_SERVER`: one export of an `NBD_OPT_LIST` answer. */
export const ServerReply = Binary.struct({
  name: Binary.prefixedString(Binary.u32),
  description: Binary.restString
})
export type ServerReply = typeof ServerReply.Type

/** `NBD_REP_META_CONTEXT`: a context id and its name. */
export const MetaContextReply = Binary.struct({
  contextId: Binary.u32,
  name: Binary.restString
})
export type MetaContextReply = typeof MetaContextReply.Type

/** `NBD_INFO_EXPORT`: size and transmission flags. */
export const InfoExport = Binary.struct({
  type: Binary.constant(Binary.u16, Info.EXPORT, "NBD_INFO_EXPORT"),
  size: Binary.u64,
  transmissionFlags: Binary.u16
})

/** `NBD_INFO_NAME`: the canonical export name. */
export const InfoName = Binary.struct({
  type: Binary.constant(Binary.u16, Info.NAME, "NBD_INFO_NAME"),
  name: Binary.restString
})

/** `NBD_INFO_DESCRIPTION`: a human-readable description. */
export const InfoDescription = Binary.struct({
  type: Binary.constant(Binary.u16, Info.DESCRIPTION, "NBD_INFO_DESCRIPTION"),
  description: Binary.restString
})

/** `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum payload sizes. */
export const InfoBlockSize = Binary.struct({
  type: Binary.constant(Binary.u16, Info.BLOCK_SIZE, "NBD_INFO_BLOCK_SIZE"),
  minimum: Binary.u32,
  preferred: Binary.u32,
  maximum: Binary.u32
})

/** Any `NBD_REP_INFO` payload, told apart by its leading type. */
export const InfoReply = Schema.Union(
  InfoExport.pipe(Schema.attachPropertySignature("_tag", "Export")),
  InfoName.pipe(Schema.attachPropertySignature("_tag", "Name")),
  InfoDescription.pipe(Schema.attachPropertySignature("_tag", "Description")),
  InfoBlockSize.pipe(Schema.attachPropertySignature("_tag", "BlockSize"))
)
export type InfoReply = typeof InfoReply.Type
