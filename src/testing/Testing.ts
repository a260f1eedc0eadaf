/**
 * What users need to test their own drivers and filters: an in-process server and client
 * ({@link connect}, {@link serve}, {@link exportDriver}), opening a driver without a server
 * ({@link open}), and, in `effect-nbd/filters`, the fault-injecting filters (`delay`,
 * `error`, `rate`) to stack on a driver under test.
 *
 * @since 0.2.0
 */
export * from "./Handle.ts"
export * from "./InProcess.ts"
