/**
 * What the receive-only HTTP transports (SSE and long-polling) share: client
 * actions over `POST /v1/client/<op>`, restarting the request when the set of
 * channels changes (the server keeps no session between requests), and finding
 * which channel made a whole request fail.
 */
import { uint, type Obj } from './codec.js';
import { ErrorCode, TidingsError } from './errors.js';
import { httpAction, httpUrl, errorFromResponse, isTidingsError } from './http.js';
import { encodePositionVector } from './position.js';
import type { CloseInfo, FetchFn, OpenResult, Session, SessionHandlers, SubscribeRequest } from './transport.js';
import type { TransportName } from './types.js';

/** Options of an HTTP session. */
export interface HttpSessionOptions {
  /** The server's base URL, `http(s)://host:port`. */
  url: string;
  /** The fetch implementation. */
  fetch: FetchFn;
  /** Give up opening after this long (ms). */
  connectTimeout: number;
  /** Reject an action after this long without an answer (ms). */
  commandTimeout: number;
  /** The current subscriptions with their positions, read at each (re)start. */
  subscriptions: () => SubscribeRequest[];
}

/** Result of one attempt to open the stream. */
export type OpenOutcome =
  | { kind: 'open'; afterOpen?: () => void }
  | { kind: 'unreachable'; reason: string }
  | { kind: 'error'; error: TidingsError };

/** Base of the SSE and long-poll sessions. */
export abstract class HttpSession implements Session {
  abstract readonly transport: TransportName;
  protected token: string | null = null;
  protected opened = false;
  protected done = false;
  /** Aborts the current stream request; replaced at each restart. */
  protected ctrl: AbortController | null = null;
  /** Channels of the running request. */
  protected channels: SubscribeRequest[] = [];
  private restartQueued = false;
  /** Bumped at each restart so that a superseded request stays quiet. */
  protected generation = 0;

  constructor(protected readonly opts: HttpSessionOptions, protected readonly h: SessionHandlers) {}

  /** Opens the stream for `subs` and runs it; resolves when it has opened or failed. */
  protected abstract openStream(subs: SubscribeRequest[], generation: number): Promise<OpenOutcome>;

  start(token: string | null, subs: SubscribeRequest[]): void {
    this.token = token;
    void this.run(subs, true);
  }

  call(op: string, args: Obj): Promise<Obj> {
    if (this.done) return Promise.reject(new TidingsError(ErrorCode.Disconnected, `${op}: not connected`));
    return httpAction(this.opts.fetch, this.opts.url, this.token, op, args, this.opts.commandTimeout);
  }

  subscribe(_req: SubscribeRequest): void {
    this.queueRestart();
  }

  unsubscribe(_channel: string): void {
    this.queueRestart();
  }

  async refresh(token: string): Promise<void> {
    // Streams are checked when they open only; new requests take the new token.
    this.token = token;
  }

  close(): void {
    if (this.done) return;
    this.done = true;
    this.ctrl?.abort();
  }

  /** The URL of a stream request for `subs`, with their position vector. */
  protected streamUrl(path: string, subs: SubscribeRequest[], extra = ''): string {
    const q = subs.map((s) => `channel=${encodeURIComponent(s.channel)}`);
    q.push(`since=${encodePositionVector(subs.map((s) => [s.channel, s.since]))}`);
    // One stream, one setting: pushes say which form they carry, so a
    // channel that did not ask for deltas still reads them right.
    if (subs.some((s) => s.delta === 'fossil')) q.push('delta=fossil');
    if (subs.some((s) => s.snapshot)) q.push('snapshot=true');
    return httpUrl(this.opts.url, `${path}?${q.join('&')}${extra}`);
  }

  /** Request headers: the token goes in `Authorization`, never in the URL. */
  protected headers(accept: string): Record<string, string> {
    const h: Record<string, string> = { accept };
    if (this.token) h.authorization = `Bearer ${this.token}`;
    return h;
  }

  /** Ends the session (once) and tells the client. */
  protected finish(info: CloseInfo): void {
    if (this.done) return;
    this.done = true;
    this.ctrl?.abort();
    this.h.onClose(info);
  }

  /** The stream of generation `gen` ended by itself. */
  protected streamEnded(gen: number, info: Omit<CloseInfo, 'opened'>): void {
    if (gen !== this.generation) return;
    this.finish({ ...info, opened: this.opened });
  }

  protected queueRestart(): void {
    if (!this.opened || this.done || this.restartQueued) return;
    this.restartQueued = true;
    // Batch the subscribes of one tick into a single new request.
    queueMicrotask(() => {
      this.restartQueued = false;
      if (this.done) return;
      void this.run(this.opts.subscriptions(), false);
    });
  }

  private async run(subs: SubscribeRequest[], first: boolean): Promise<void> {
    this.generation += 1;
    const gen = this.generation;
    this.ctrl?.abort();
    // Channels found bad are dropped and the rest retried; each pass drops
    // at least one, so this ends.
    let pending = subs;
    let afterOpen: (() => void) | undefined;
    const failed: Array<{ channel: string; error: TidingsError }> = [];
    for (;;) {
      if (this.done || gen !== this.generation) return;
      this.channels = pending;
      if (pending.length === 0) break;
      const outcome = await this.openStream(pending, gen);
      if (this.done || gen !== this.generation) return;
      if (outcome.kind === 'open') {
        afterOpen = outcome.afterOpen;
        break;
      }
      if (outcome.kind === 'unreachable') {
        this.finish({ opened: this.opened, code: 0, reason: outcome.reason, reconnect: true });
        return;
      }
      const err = outcome.error;
      const bad = isChannelLevel(err) && pending.length > 0 ? await this.probe(pending) : [];
      if (this.done || gen !== this.generation) return;
      if (bad.length === 0) {
        this.finish({ opened: this.opened, code: 0, reason: err.message, reconnect: err.temporary, error: err });
        return;
      }
      failed.push(...bad);
      const badSet = new Set(bad.map((b) => b.channel));
      pending = pending.filter((s) => !badSet.has(s.channel));
    }
    const subscribed: OpenResult['subscribed'] = [];
    for (const f of failed) subscribed.push({ channel: f.channel, error: f.error });
    // Every channel is announced; the client ignores those it already has.
    for (const s of this.channels) {
      subscribed.push({ channel: s.channel, ok: syntheticReply(s) });
    }
    if (first || !this.opened) {
      this.opened = true;
      this.h.onOpen({ subscribed });
    } else {
      for (const s of subscribed) this.h.onSubscribed(s.channel, s.ok ?? null, s.error ?? null);
    }
    // Events are read only now, after the client knows the channels are
    // subscribed: a recovered publication must not come before its reply.
    if (!this.done && gen === this.generation) afterOpen?.();
  }

  /**
   * Finds the channels that fail on their own: one answer-at-once poll per
   * channel. Only run after a whole request failed, so it costs nothing
   * normally.
   */
  protected async probe(subs: SubscribeRequest[]): Promise<Array<{ channel: string; error: TidingsError }>> {
    const out: Array<{ channel: string; error: TidingsError }> = [];
    await Promise.all(subs.map(async (s) => {
      try {
        const res = await this.opts.fetch(
          httpUrl(this.opts.url, `/v1/poll?channel=${encodeURIComponent(s.channel)}&timeout=0`),
          { headers: this.headers('application/json') },
        );
        if (!res.ok) {
          const e = await errorFromResponse(res);
          if (isTidingsError(e) && !e.temporary) out.push({ channel: s.channel, error: e });
        } else {
          await res.text().catch(() => '');
        }
      } catch {
        // Unreachable: not this channel's fault.
      }
    }));
    // A token error fails every channel alike: that is the connection's.
    // (With one channel the two cannot be told apart; it is reported on the
    // channel, as WebSocket would report a channel-level refusal.)
    if (out.length === subs.length && subs.length > 1) return [];
    return out;
  }
}

/**
 * Whether an error answer to a whole request may come from one of its
 * channels (`101`, `102`, `103`, `104`): then each channel is checked alone.
 */
export function isChannelLevel(err: TidingsError): boolean {
  return [ErrorCode.BadRequest, ErrorCode.UnknownChannel, ErrorCode.PermissionDenied,
    ErrorCode.LimitExceeded].includes(err.code as 101);
}

/**
 * The subscribe reply an HTTP stream stands for: the channel resumes from
 * the position sent (a `reset` event follows if it could not) or starts live.
 */
function syntheticReply(s: SubscribeRequest): Obj {
  if (!s.since) return {};
  return { offset: s.since.offset, epoch: s.since.epoch, recovered: true };
}

/** Reads `offset` and `epoch` from an `ok` object, if both are there. */
export function positionOf(ok: Obj): { offset: number; epoch: string } | null {
  const offset = uint(ok.offset);
  return offset !== undefined && typeof ok.epoch === 'string' ? { offset, epoch: ok.epoch } : null;
}
