/**
 * Client actions over HTTP (`POST /v1/client/<op>`) and the decoding of HTTP
 * error answers; used by the SSE and long-poll transports, and by the client
 * for reads when no WebSocket is open.
 */
import { type Obj } from './codec.js';
import { TidingsError } from './errors.js';
import type { FetchFn } from './transport.js';
/** Joins the server's base URL and a path. */
export declare function httpUrl(base: string, path: string): string;
/** Reads an HTTP answer's error body; never throws. */
export declare function errorFromResponse(res: Response): Promise<TidingsError>;
/** Whether an HTTP error answer came from Tidings (an error body), not from a proxy. */
export declare function isTidingsError(e: TidingsError): boolean;
/**
 * POSTs a client action and resolves with its `ok` object. Network failures
 * reject with {@link ErrorCode.Disconnected} (temporary), error answers with
 * the protocol's code.
 */
export declare function httpAction(fetchFn: FetchFn, base: string, token: string | null, op: string, args: Obj, timeoutMs: number): Promise<Obj>;
