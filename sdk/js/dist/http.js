/**
 * Client actions over HTTP (`POST /v1/client/<op>`) and the decoding of HTTP
 * error answers; used by the SSE and long-poll transports, and by the client
 * for reads when no WebSocket is open.
 */
import { isObj, parseJson } from './codec.js';
import { ErrorCode, TidingsError } from './errors.js';
/** Joins the server's base URL and a path. */
export function httpUrl(base, path) {
    return base.replace(/\/+$/, '') + path;
}
/** Reads an HTTP answer's error body; never throws. */
export async function errorFromResponse(res) {
    let text = '';
    try {
        text = await res.text();
    }
    catch {
        // The body could not be read; fall through to the status alone.
    }
    const body = parseJson(text);
    if (isObj(body) && isObj(body.error))
        return TidingsError.fromBody(body.error);
    return new TidingsError(ErrorCode.BadResponse, `HTTP ${res.status} without an error body`, true);
}
/** Whether an HTTP error answer came from Tidings (an error body), not from a proxy. */
export function isTidingsError(e) {
    return e.code >= 100;
}
/**
 * POSTs a client action and resolves with its `ok` object. Network failures
 * reject with {@link ErrorCode.Disconnected} (temporary), error answers with
 * the protocol's code.
 */
export async function httpAction(fetchFn, base, token, op, args, timeoutMs) {
    const headers = { 'content-type': 'application/json' };
    if (token)
        headers.authorization = `Bearer ${token}`;
    if (op === 'publish' && typeof args.idempotency_key === 'string') {
        headers['idempotency-key'] = args.idempotency_key;
    }
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), timeoutMs);
    let res;
    try {
        res = await fetchFn(httpUrl(base, `/v1/client/${op}`), {
            method: 'POST',
            headers,
            body: JSON.stringify(args),
            signal: ctrl.signal,
        });
    }
    catch (e) {
        clearTimeout(timer);
        if (ctrl.signal.aborted)
            throw new TidingsError(ErrorCode.Timeout, `${op}: no answer in time`);
        throw new TidingsError(ErrorCode.Disconnected, `${op}: ${e?.message ?? 'network error'}`);
    }
    try {
        if (!res.ok)
            throw await errorFromResponse(res);
        const body = parseJson(await res.text());
        if (!isObj(body))
            throw new TidingsError(ErrorCode.BadResponse, `${op}: the answer is not a JSON object`, true);
        return body;
    }
    catch (e) {
        if (e instanceof TidingsError)
            throw e;
        // The body stream failed mid-way: the connection was lost.
        throw new TidingsError(ErrorCode.Disconnected, `${op}: ${e?.message ?? 'network error'}`);
    }
    finally {
        clearTimeout(timer);
    }
}
