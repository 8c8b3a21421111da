/**
 * The Server-Sent Events transport: `GET /v1/sse`, read with `fetch` rather
 * than `EventSource` so that the token travels in `Authorization` (not in
 * URLs that end up in logs), and so that reconnecting, token refresh and the
 * position to resume from stay under the client's control.
 */
import { isObj, parseJson, uint, str } from './codec.js';
import { isTerminalCloseCode } from './errors.js';
import { errorFromResponse, httpAction, isTidingsError } from './http.js';
import { HttpSession } from './transport_http.js';
/** The server comments `: ping` after 15 s of silence; allow for slack. */
const SSE_SILENCE_MS = 45000;
/** One SSE stream (restarted when the channel set changes). */
export class SseSession extends HttpSession {
    constructor() {
        super(...arguments);
        this.transport = 'sse';
        /**
         * A stream in presence stays there only while it proves its reader is
         * alive: a heartbeat every `heartbeat_ms`, under its lease. A frozen
         * tab or process sends none, and the server ends the stream (3004), so it
         * leaves presence as a frozen WebSocket client does by missing pongs.
         */
        this.heartbeat = null;
    }
    /**
     * The server ends a stream when the token it opened with expires (3005):
     * reopen it with the new token first, resuming from the positions held.
     */
    async refresh(token) {
        await super.refresh(token);
        this.queueRestart();
    }
    async openStream(subs, gen) {
        const ctrl = new AbortController();
        this.ctrl = ctrl;
        // The stream counts as open only once the server's opening block
        // (`retry:` and `id:`, then a blank line) has been read, within
        // connectTimeout: a proxy that buffers the body passes the headers at
        // once and then nothing, and must count as a transport that failed.
        const timer = setTimeout(() => ctrl.abort(), this.opts.connectTimeout);
        let res;
        try {
            res = await this.opts.fetch(this.streamUrl('/v1/sse', subs), {
                headers: this.headers('text/event-stream'),
                signal: ctrl.signal,
                cache: 'no-store',
            });
        }
        catch (e) {
            clearTimeout(timer);
            return { kind: 'unreachable', reason: `SSE could not be opened: ${e?.message ?? e}` };
        }
        if (!res.ok) {
            clearTimeout(timer);
            const err = await errorFromResponse(res);
            // An answer without a Tidings error body comes from something in the
            // way (a proxy): this transport cannot open here.
            if (!isTidingsError(err))
                return { kind: 'unreachable', reason: `SSE answered HTTP ${res.status}` };
            return { kind: 'error', error: err };
        }
        const type = res.headers.get('content-type') ?? '';
        if (!type.startsWith('text/event-stream') || !res.body) {
            clearTimeout(timer);
            ctrl.abort();
            return { kind: 'unreachable', reason: `SSE answered ${type || 'no content type'}` };
        }
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        try {
            while (!openingBlockRead(buf)) {
                const { value, done } = await reader.read();
                if (done) {
                    ctrl.abort();
                    return { kind: 'unreachable', reason: 'SSE stream ended before its opening block' };
                }
                buf += decoder.decode(value, { stream: true });
            }
        }
        catch {
            ctrl.abort();
            reader.cancel().catch(() => undefined);
            return {
                kind: 'unreachable',
                reason: `SSE stream opened but its opening block did not come within ${this.opts.connectTimeout} ms (a buffering proxy?)`,
            };
        }
        finally {
            clearTimeout(timer);
        }
        return { kind: 'open', afterOpen: () => void this.read(reader, decoder, buf, ctrl, gen) };
    }
    async read(reader, decoder, initial, ctrl, gen) {
        let buf = '';
        let pending = initial;
        let event = '';
        let data = [];
        let watchdog = null;
        this.stopHeartbeat();
        const arm = () => {
            if (watchdog)
                clearTimeout(watchdog);
            watchdog = setTimeout(() => ctrl.abort(), SSE_SILENCE_MS);
        };
        arm();
        let ended = {
            code: 0, reason: 'SSE stream ended', reconnect: true,
        };
        try {
            for (;;) {
                if (pending !== null) {
                    buf += pending;
                    pending = null;
                }
                else {
                    const { value, done } = await reader.read();
                    if (done)
                        break;
                    arm();
                    buf += decoder.decode(value, { stream: true });
                }
                let nl;
                while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
                    const line = buf.slice(0, nl);
                    buf = buf.slice(nl + (buf.startsWith('\r\n', nl) ? 2 : 1));
                    if (line === '') {
                        // Blank line: dispatch the event.
                        if (data.length && gen === this.generation && !this.done) {
                            const d = this.dispatch(event || 'message', data.join('\n'));
                            if (d)
                                ended = d;
                        }
                        event = '';
                        data = [];
                        continue;
                    }
                    if (line.startsWith(':'))
                        continue; // comment (`: ping`)
                    const colon = line.indexOf(':');
                    const field = colon < 0 ? line : line.slice(0, colon);
                    let val = colon < 0 ? '' : line.slice(colon + 1);
                    if (val.startsWith(' '))
                        val = val.slice(1);
                    if (field === 'event')
                        event = val;
                    else if (field === 'data')
                        data.push(val);
                    // `id:` and `retry:` are ignored: the client tracks positions itself
                    // and schedules its own reconnects.
                }
            }
        }
        catch {
            // Aborted or the connection dropped.
        }
        finally {
            if (watchdog)
                clearTimeout(watchdog);
            if (gen === this.generation)
                this.stopHeartbeat();
            reader.cancel().catch(() => undefined);
        }
        if (ctrl.signal.aborted && gen !== this.generation)
            return;
        this.streamEnded(gen, ended);
    }
    startHeartbeat(lease, everyMs) {
        this.stopHeartbeat();
        const beat = () => {
            httpAction(this.opts.fetch, this.opts.url, this.token, 'heartbeat', { lease }, this.opts.commandTimeout)
                .catch(() => undefined); // A missed beat is retried at the next one.
        };
        this.heartbeat = setInterval(beat, Math.max(100, everyMs));
    }
    stopHeartbeat() {
        if (this.heartbeat)
            clearInterval(this.heartbeat);
        this.heartbeat = null;
    }
    /** Handles one event; returns the disconnect it announces, if any. */
    dispatch(event, data) {
        const v = parseJson(data);
        if (!isObj(v))
            return null;
        if (event === 'connected') {
            const lease = str(v.lease);
            const every = uint(v.heartbeat_ms);
            if (lease && every !== undefined)
                this.startHeartbeat(lease, every);
            return null;
        }
        if (event === 'disconnect') {
            const code = uint(v.code) ?? 0;
            const d = {
                code,
                reason: str(v.reason) ?? '',
                reconnect: typeof v.reconnect === 'boolean' ? v.reconnect : !isTerminalCloseCode(code),
            };
            const delay = uint(v.delay_ms);
            if (delay !== undefined)
                d.delayMs = delay;
            return d;
        }
        if (['pub', 'reset', 'join', 'leave', 'unsub', 'gap', 'receipt', 'inbox'].includes(event)) {
            this.h.onPush({ ...v, push: event });
        }
        return null;
    }
}
/** Whether `buf` holds a whole first block (lines, then a blank line). */
function openingBlockRead(buf) {
    const t = buf.replace(/\r\n?/g, '\n');
    return t.startsWith('\n') || t.includes('\n\n');
}
