/** Publishes typing signals for the local user. */
export class Typing {
    /**
     * @param client the client to publish with
     * @param channel the typing channel, e.g. `demo_typing:lobby`
     */
    constructor(client, channel, opts = {}) {
        this.client = client;
        this.channel = channel;
        this.lastTrue = 0;
        this.idleTimer = null;
        this.typing = false;
        this.interval = opts.interval ?? 1500;
        this.idle = opts.idle ?? 3000;
    }
    /** Call on every keystroke: sends `true`, throttled. */
    keystroke() {
        const now = Date.now();
        if (!this.typing || now - this.lastTrue >= this.interval) {
            this.lastTrue = now;
            this.typing = true;
            this.send(true);
        }
        if (this.idleTimer)
            clearTimeout(this.idleTimer);
        this.idleTimer = setTimeout(() => this.stop(), this.idle);
    }
    /** The user stopped (sent the message, left the field): sends `false`. */
    stop() {
        if (this.idleTimer)
            clearTimeout(this.idleTimer);
        this.idleTimer = null;
        if (!this.typing)
            return;
        this.typing = false;
        this.send(false);
    }
    send(typing) {
        if (this.client.state !== 'connected')
            return;
        this.client.publish(this.channel, { typing }, { queue: false }).catch(() => undefined);
    }
}
/**
 * Watches a typing channel and tells who is typing now. A `true` not renewed
 * within `ttl` ms counts as `false` (delivery is at most once).
 */
export class TypingWatcher {
    /**
     * @param client the client
     * @param channel the typing channel
     * @param onChange called with the names of who is typing, the local user excluded
     * @param ttl ms after which a silent typist is dropped (default 4000)
     */
    constructor(client, channel, onChange, ttl = 4000) {
        this.onChange = onChange;
        this.ttl = ttl;
        this.typing = new Map();
        this.timer = null;
        const sub = client.subscribe(channel);
        this.off = sub.on('publication', (p) => {
            const user = p.info?.user ?? '';
            if (user === (client.user ?? null))
                return;
            const d = p.data;
            const info = p.info?.info;
            const name = typeof info?.name === 'string' ? info.name : user || 'someone';
            if (d && d.typing === true)
                this.typing.set(user, { name, until: Date.now() + this.ttl });
            else
                this.typing.delete(user);
            this.report();
        });
        this.timer = setInterval(() => this.expire(), 1000);
    }
    /** Stops watching. */
    destroy() {
        this.off();
        if (this.timer)
            clearInterval(this.timer);
    }
    expire() {
        const now = Date.now();
        let changed = false;
        for (const [u, t] of this.typing) {
            if (t.until < now) {
                this.typing.delete(u);
                changed = true;
            }
        }
        if (changed)
            this.report();
    }
    report() {
        this.onChange([...this.typing.values()].map((t) => t.name).sort());
    }
}
