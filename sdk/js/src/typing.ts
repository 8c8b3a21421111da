/**
 * Typing indicators: publications of `{typing: true|false}` into a channel of
 * an ephemeral namespace with a publish rate limit (the demo's
 * `demo_typing`). Signals are worth nothing later, so they bypass the outbox,
 * and a refused one (105, rate limited) is simply dropped.
 */
import type { TidingsClient } from './client.js';

/** Options of {@link Typing}. */
export interface TypingOptions {
  /** At most one `true` per this many ms (default 1500; keep it above the namespace's rate limit). */
  interval?: number;
  /** Send `false` after this many ms without a keystroke (default 3000). */
  idle?: number;
}

/** Publishes typing signals for the local user. */
export class Typing {
  private lastTrue = 0;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;
  private typing = false;
  private readonly interval: number;
  private readonly idle: number;

  /**
   * @param client the client to publish with
   * @param channel the typing channel, e.g. `demo_typing:lobby`
   */
  constructor(private readonly client: TidingsClient, private readonly channel: string, opts: TypingOptions = {}) {
    this.interval = opts.interval ?? 1500;
    this.idle = opts.idle ?? 3000;
  }

  /** Call on every keystroke: sends `true`, throttled. */
  keystroke(): void {
    const now = Date.now();
    if (!this.typing || now - this.lastTrue >= this.interval) {
      this.lastTrue = now;
      this.typing = true;
      this.send(true);
    }
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.stop(), this.idle);
  }

  /** The user stopped (sent the message, left the field): sends `false`. */
  stop(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (!this.typing) return;
    this.typing = false;
    this.send(false);
  }

  private send(typing: boolean): void {
    if (this.client.state !== 'connected') return;
    this.client.publish(this.channel, { typing }, { queue: false }).catch(() => undefined);
  }
}

/**
 * Watches a typing channel and tells who is typing now. A `true` not renewed
 * within `ttl` ms counts as `false` (delivery is at most once).
 */
export class TypingWatcher {
  private readonly typing = new Map<string, { name: string; until: number }>();
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly off: () => void;

  /**
   * @param client the client
   * @param channel the typing channel
   * @param onChange called with the names of who is typing, the local user excluded
   * @param ttl ms after which a silent typist is dropped (default 4000)
   */
  constructor(
    client: TidingsClient,
    channel: string,
    private readonly onChange: (names: string[]) => void,
    private readonly ttl = 4000,
  ) {
    const sub = client.subscribe(channel);
    this.off = sub.on('publication', (p) => {
      const user = p.info?.user ?? '';
      if (user === (client.user ?? null)) return;
      const d = p.data as { typing?: unknown } | null;
      const info = p.info?.info as { name?: unknown } | undefined;
      const name = typeof info?.name === 'string' ? info.name : user || 'someone';
      if (d && d.typing === true) this.typing.set(user, { name, until: Date.now() + this.ttl });
      else this.typing.delete(user);
      this.report();
    });
    this.timer = setInterval(() => this.expire(), 1000);
  }

  /** Stops watching. */
  destroy(): void {
    this.off();
    if (this.timer) clearInterval(this.timer);
  }

  private expire(): void {
    const now = Date.now();
    let changed = false;
    for (const [u, t] of this.typing) {
      if (t.until < now) {
        this.typing.delete(u);
        changed = true;
      }
    }
    if (changed) this.report();
  }

  private report(): void {
    this.onChange([...this.typing.values()].map((t) => t.name).sort());
  }
}
