/**
 * The long-poll transport: `GET /v1/poll` in a loop, each request carrying
 * the position vector of what the client has processed.
 */
import { isObj, parseJson, type Obj } from './codec.js';
import { errorFromResponse, isTidingsError } from './http.js';
import { HttpSession, isChannelLevel, type OpenOutcome } from './transport_http.js';
import type { SubscribeRequest } from './transport.js';

/** Seconds a poll is held by the server when nothing happens. */
const POLL_TIMEOUT_S = 25;

/** A long-polling loop (restarted when the channel set changes). */
export class PollSession extends HttpSession {
  readonly transport = 'poll' as const;

  protected async openStream(subs: SubscribeRequest[], gen: number): Promise<OpenOutcome> {
    // The first request answers at once (timeout=0), so that opening does
    // not wait for a publication.
    const buffered: Obj[] = [];
    const first = await this.poll(subs, 0, this.opts.connectTimeout, buffered);
    if (first.kind !== 'open') return first;
    return {
      kind: 'open',
      afterOpen: () => {
        for (const ev of buffered) this.h.onPush(ev);
        void this.loop(gen);
      },
    };
  }

  private async loop(gen: number): Promise<void> {
    for (;;) {
      if (this.done || gen !== this.generation) return;
      // Positions are re-read each time: the pushes of the previous answer
      // moved them.
      const subs = this.opts.subscriptions();
      if (subs.length === 0) return;
      const r = await this.poll(subs, POLL_TIMEOUT_S, (POLL_TIMEOUT_S + 15) * 1000);
      if (this.done || gen !== this.generation) return;
      if (r.kind === 'unreachable') {
        this.streamEnded(gen, { code: 0, reason: r.reason, reconnect: true });
        return;
      }
      if (r.kind === 'error' && isChannelLevel(r.error)) {
        // One channel may have become refused (its access ended): find which
        // alone, fail only those subscriptions, and go on with the rest (the
        // client unsubscribes them, which restarts the polling without them).
        const bad = await this.probe(subs);
        if (this.done || gen !== this.generation) return;
        if (bad.length > 0) {
          for (const b of bad) this.h.onSubscribed(b.channel, null, b.error);
          const badSet = new Set(bad.map((b) => b.channel));
          if (!this.opts.subscriptions().some((s) => badSet.has(s.channel))) continue;
        }
      }
      if (r.kind === 'error') {
        this.streamEnded(gen, { code: 0, reason: r.error.message, reconnect: r.error.temporary || r.error.code === 106, error: r.error });
        return;
      }
    }
  }

  /** One poll; pushes go to the client before it returns. */
  private async poll(
    subs: SubscribeRequest[],
    timeoutS: number,
    abortMs: number,
    buffer?: Obj[],
  ): Promise<OpenOutcome> {
    const ctrl = new AbortController();
    this.ctrl = ctrl;
    const gen = this.generation;
    const timer = setTimeout(() => ctrl.abort(), abortMs);
    try {
      const res = await this.opts.fetch(this.streamUrl('/v1/poll', subs, `&timeout=${timeoutS}`), {
        headers: this.headers('application/json'),
        signal: ctrl.signal,
        cache: 'no-store',
      });
      if (!res.ok) {
        const err = await errorFromResponse(res);
        if (!isTidingsError(err)) return { kind: 'unreachable', reason: `poll answered HTTP ${res.status}` };
        return { kind: 'error', error: err };
      }
      const body = parseJson(await res.text());
      if (!isObj(body) || !Array.isArray(body.events)) {
        return { kind: 'unreachable', reason: 'poll answer is not Tidings JSON' };
      }
      if (gen === this.generation && !this.done) {
        for (const ev of body.events) {
          if (!isObj(ev) || typeof ev.push !== 'string') continue;
          if (buffer) buffer.push(ev);
          else this.h.onPush(ev);
        }
      }
      return { kind: 'open' };
    } catch (e) {
      return { kind: 'unreachable', reason: `poll failed: ${(e as Error)?.message ?? e}` };
    } finally {
      clearTimeout(timer);
    }
  }
}
