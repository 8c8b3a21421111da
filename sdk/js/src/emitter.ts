/** A small typed event emitter; listeners that throw never break the SDK. */
/** A listener of events of type `T`. */
export type Listener<T> = (event: T) => void;

/** Event emitter keyed by event name; `Events` maps names to payload types. */
export class Emitter<Events extends object> {
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(name);
    if (!set) {
      set = new Set();
      this.listeners.set(name, set);
    }
    set.add(listener as Listener<never>);
    return () => this.off(name, listener);
  }

  /** Adds a listener called at most once. */
  once<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(name, (e) => {
      off();
      listener(e);
    });
    return off;
  }

  /** Removes a listener. */
  off<K extends keyof Events>(name: K, listener: Listener<Events[K]>): void {
    this.listeners.get(name)?.delete(listener as Listener<never>);
  }

  /** Calls every listener of `name` with `event`. */
  protected emit<K extends keyof Events>(name: K, event: Events[K]): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const l of [...set]) {
      try {
        (l as Listener<Events[K]>)(event);
      } catch (e) {
        // An app bug in a listener must not stop delivery to the others or
        // corrupt the SDK's state; report it and go on.
        console.error('tidings: an event listener threw', e);
      }
    }
  }
}
