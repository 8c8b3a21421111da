/** Event emitter keyed by event name; `Events` maps names to payload types. */
export class Emitter {
    constructor() {
        this.listeners = new Map();
    }
    /** Adds a listener; returns a function that removes it. */
    on(name, listener) {
        let set = this.listeners.get(name);
        if (!set) {
            set = new Set();
            this.listeners.set(name, set);
        }
        set.add(listener);
        return () => this.off(name, listener);
    }
    /** Adds a listener called at most once. */
    once(name, listener) {
        const off = this.on(name, (e) => {
            off();
            listener(e);
        });
        return off;
    }
    /** Removes a listener. */
    off(name, listener) {
        this.listeners.get(name)?.delete(listener);
    }
    /** Calls every listener of `name` with `event`. */
    emit(name, event) {
        const set = this.listeners.get(name);
        if (!set)
            return;
        for (const l of [...set]) {
            try {
                l(event);
            }
            catch (e) {
                // An app bug in a listener must not stop delivery to the others or
                // corrupt the SDK's state; report it and go on.
                console.error('tidings: an event listener threw', e);
            }
        }
    }
}
