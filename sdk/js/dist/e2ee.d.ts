import type { DeviceKey } from './chat.js';
import type { Publication } from './types.js';
/** Where a device keeps its key pair: strings by name. */
export interface KeyStore {
    /** The value stored under `name`, or null. */
    get(name: string): Promise<string | null> | string | null;
    /** Stores `value` under `name`. */
    set(name: string, value: string): Promise<void> | void;
}
/** Keys in memory: a new device each run (the default in Node). */
export declare class MemoryKeyStore implements KeyStore {
    private readonly map;
    get(name: string): string | null;
    set(name: string, value: string): void;
}
/**
 * Keys in `localStorage` (browsers): the device survives reloads. The
 * private key is readable by any script of the page's origin.
 */
export declare class LocalStorageKeyStore implements KeyStore {
    private readonly prefix;
    constructor(prefix?: string);
    get(name: string): string | null;
    set(name: string, value: string): void;
}
/** Keys in IndexedDB (browsers), database `tidings-keys`. */
export declare class IndexedDbKeyStore implements KeyStore {
    private readonly dbName;
    private db;
    constructor(dbName?: string);
    get(name: string): Promise<string | null>;
    set(name: string, value: string): Promise<void>;
    private open;
}
/** `localStorage` when the platform has it, else memory. */
export declare function defaultKeyStore(): KeyStore;
/** Options of end-to-end encryption (the client's `e2ee` option). */
export interface E2eeOptions {
    /** This device's id (1 to 64 of `A-Z a-z 0-9 _ -`). Default: one made at random and kept in the key store. */
    device?: string;
    /** Where the key pair is kept. Default: `localStorage` in browsers, memory elsewhere. */
    keyStore?: KeyStore;
    /** How long a channel's key directory is reused for sealing, ms (default 15000). */
    keyCacheMs?: number;
}
/** The envelope an encrypted message is published as. */
export interface Envelope {
    e2ee: 1;
    from: {
        user: string;
        device: string;
    };
    iv: string;
    ct: string;
    to: Array<{
        user: string;
        device: string;
        iv: string;
        k: string;
    }>;
}
/** This device's identity. */
export interface DeviceIdentity {
    /** The user id. */
    user: string;
    /** The device id. */
    device: string;
    /** The public key as registered (base64url of the uncompressed point). */
    publicKey: string;
}
/** What {@link E2ee} needs from the client. */
export interface E2eeHost {
    /** The user the connection is (or will be) for; null when anonymous. */
    currentUser(): Promise<string | null>;
    /** Registers this device's key (`keys` with `device` and `key`). */
    registerDeviceKey(device: string, key: string): Promise<void>;
    /** Looks keys up (`keys` with `users` or `channel`). */
    deviceKeys(q: {
        users?: string[];
        channel?: string;
    }): Promise<Record<string, DeviceKey[]>>;
}
/** Whether `data` looks like an E2EE envelope. */
export declare function isEnvelope(data: unknown): data is Envelope;
/**
 * One device's end-to-end encryption: its key pair, sealing messages for a
 * channel's members, opening what others sealed for it.
 */
export declare class E2ee {
    private readonly host;
    private readonly opts;
    private readonly store;
    private readonly keyCacheMs;
    private identityP;
    private identityUser;
    private registered;
    /** Whose key `registered` is (the connection's user may change). */
    private registeredUser;
    private readonly channelKeys;
    private readonly userKeys;
    private readonly userLookups;
    private readonly publicKeys;
    private readonly wrapKeys;
    /** @internal Use the client's `e2ee` option (or `client.e2ee`). */
    constructor(host: E2eeHost, opts?: E2eeOptions);
    /**
     * Loads (or makes and stores) this device's key pair and registers its
     * public key; resolves with the device's identity. Sealing calls it; call
     * it yourself to be reachable before your first message. A failed
     * registration is tried again on the next call.
     */
    ready(): Promise<DeviceIdentity>;
    /** This device's identity (loaded or made; not registered by this). */
    device(): Promise<DeviceIdentity>;
    /** Forgets cached key directories (all, or one channel's): the next seal reads them again. */
    forgetKeys(channel?: string): void;
    /**
     * Seals `data` for every registered device of the channel's members (this
     * device included). Rejects when the directory cannot be read.
     */
    seal(channel: string, data: unknown): Promise<Envelope>;
    /**
     * Opens a publication: an envelope becomes its plaintext (`encrypted:
     * true`); one that cannot be opened keeps `data: null` with
     * `undecryptable` saying why. Anything else is returned as is. Never
     * rejects.
     */
    open(pub: Publication): Promise<Publication>;
    private openEnvelope;
    /** A sender device's key from the directory (cached; read again on a miss or with `fresh`). */
    private senderKey;
    /** The channel's key directory, reused for `keyCacheMs`; a stale one when reading fails for now. */
    private directory;
    private wrapKey;
    private publicKey;
    /** Loads or makes the key pair of the current user's device. */
    private identity;
    private loadIdentity;
}
/** base64url without padding. */
export declare function b64u(bytes: Uint8Array): string;
/** Decodes base64url (padding optional); throws on anything else. */
export declare function unb64u(s: string): Uint8Array<ArrayBuffer>;
/** The recipients an envelope names (user and device of each wrapped key); empty for anything else. */
export declare function envelopeRecipients(v: unknown): Array<{
    user: string;
    device: string;
}>;
