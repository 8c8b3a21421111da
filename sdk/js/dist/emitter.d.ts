/** A small typed event emitter; listeners that throw never break the SDK. */
/** A listener of events of type `T`. */
export type Listener<T> = (event: T) => void;
/** Event emitter keyed by event name; `Events` maps names to payload types. */
export declare class Emitter<Events extends object> {
    private readonly listeners;
    /** Adds a listener; returns a function that removes it. */
    on<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void;
    /** Adds a listener called at most once. */
    once<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void;
    /** Removes a listener. */
    off<K extends keyof Events>(name: K, listener: Listener<Events[K]>): void;
    /** Calls every listener of `name` with `event`. */
    protected emit<K extends keyof Events>(name: K, event: Events[K]): void;
}
