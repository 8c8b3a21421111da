/**
 * End-to-end encryption of chat messages, with WebCrypto only
 * (`globalThis.crypto.subtle`: browsers, Node 18+).
 *
 * Each device has an ECDH P-256 key pair, made once and kept in a
 * {@link KeyStore}; its public key is registered with the `keys` command.
 * A message is sealed with a random AES-256-GCM content key (additional
 * data: the channel name); the content key is wrapped for every device of
 * every member (the sender's other devices and this one included) with
 * AES-GCM under HKDF-SHA256(ECDH(sender private, recipient public),
 * info = `tidings-e2ee-v1|<fromUser>/<fromDevice>|<toUser>/<toDevice>|<channel>`).
 * The envelope published as the data:
 *
 * ```json
 * {"e2ee": 1, "from": {"user", "device"}, "iv", "ct", "to": [{"user", "device", "iv", "k"}]}
 * ```
 *
 * (base64url fields, no padding). Threat model: docs/sdk.md, "End-to-end
 * encryption". In short: the server cannot read payloads, but it sees
 * metadata and could hand out a key of its own (no key verification), and
 * there is no forward secrecy.
 */
import { isObj, str } from './codec.js';
import type { DeviceKey } from './chat.js';
import { ErrorCode, TidingsError } from './errors.js';
import type { Publication } from './types.js';

/** Where a device keeps its key pair: strings by name. */
export interface KeyStore {
  /** The value stored under `name`, or null. */
  get(name: string): Promise<string | null> | string | null;
  /** Stores `value` under `name`. */
  set(name: string, value: string): Promise<void> | void;
}

/** Keys in memory: a new device each run (the default in Node). */
export class MemoryKeyStore implements KeyStore {
  private readonly map = new Map<string, string>();

  get(name: string): string | null {
    return this.map.get(name) ?? null;
  }

  set(name: string, value: string): void {
    this.map.set(name, value);
  }
}

/**
 * Keys in `localStorage` (browsers): the device survives reloads. The
 * private key is readable by any script of the page's origin.
 */
export class LocalStorageKeyStore implements KeyStore {
  constructor(private readonly prefix = '') {}

  get(name: string): string | null {
    return storage()?.getItem(this.prefix + name) ?? null;
  }

  set(name: string, value: string): void {
    storage()?.setItem(this.prefix + name, value);
  }
}

/** Keys in IndexedDB (browsers), database `tidings-keys`. */
export class IndexedDbKeyStore implements KeyStore {
  private db: Promise<IDBDatabase> | null = null;

  constructor(private readonly dbName = 'tidings-keys') {}

  async get(name: string): Promise<string | null> {
    const db = await this.open();
    return new Promise((resolve, reject) => {
      const req = db.transaction('keys', 'readonly').objectStore('keys').get(name);
      req.onsuccess = () => resolve(typeof req.result === 'string' ? req.result : null);
      req.onerror = () => reject(req.error);
    });
  }

  async set(name: string, value: string): Promise<void> {
    const db = await this.open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction('keys', 'readwrite');
      tx.objectStore('keys').put(value, name);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  }

  private open(): Promise<IDBDatabase> {
    this.db ??= new Promise((resolve, reject) => {
      const req = indexedDB.open(this.dbName, 1);
      req.onupgradeneeded = () => req.result.createObjectStore('keys');
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    return this.db;
  }
}

function storage(): Storage | null {
  try {
    return (globalThis as { localStorage?: Storage }).localStorage ?? null;
  } catch {
    return null; // access denied (sandboxed frame, privacy settings)
  }
}

/** `localStorage` when the platform has it, else memory. */
export function defaultKeyStore(): KeyStore {
  return storage() ? new LocalStorageKeyStore() : new MemoryKeyStore();
}

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
  from: { user: string; device: string };
  iv: string;
  ct: string;
  to: Array<{ user: string; device: string; iv: string; k: string }>;
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
  deviceKeys(q: { users?: string[]; channel?: string }): Promise<Record<string, DeviceKey[]>>;
}

interface StoredIdentity {
  v: 1;
  device: string;
  publicKey: string;
  privateJwk: JsonWebKey;
}

interface Identity extends DeviceIdentity {
  privateKey: CryptoKey;
}

const INFO_PREFIX = 'tidings-e2ee-v1';
const DEVICE_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** Whether `data` looks like an E2EE envelope. */
export function isEnvelope(data: unknown): data is Envelope {
  return isObj(data) && data.e2ee === 1 && isObj(data.from) && typeof data.ct === 'string' && Array.isArray(data.to);
}

/**
 * One device's end-to-end encryption: its key pair, sealing messages for a
 * channel's members, opening what others sealed for it.
 */
export class E2ee {
  private readonly store: KeyStore;
  private readonly keyCacheMs: number;
  private identityP: Promise<Identity> | null = null;
  private identityUser: string | null = null;
  private registered: Promise<DeviceIdentity> | null = null;
  /** Whose key `registered` is (the connection's user may change). */
  private registeredUser: string | null = null;
  private readonly channelKeys = new Map<string, { at: number; keys: Record<string, DeviceKey[]> }>();
  private readonly userKeys = new Map<string, { at: number; keys: DeviceKey[] }>();
  private readonly userLookups = new Map<string, Promise<DeviceKey[]>>();
  private readonly publicKeys = new Map<string, Promise<CryptoKey>>();
  private readonly wrapKeys = new Map<string, Promise<CryptoKey>>();

  /** @internal Use the client's `e2ee` option (or `client.e2ee`). */
  constructor(private readonly host: E2eeHost, private readonly opts: E2eeOptions = {}) {
    if (opts.device !== undefined && !DEVICE_RE.test(opts.device)) {
      throw new TidingsError(ErrorCode.BadRequest, 'e2ee: device must be 1 to 64 of A-Z a-z 0-9 _ -', false);
    }
    this.store = opts.keyStore ?? defaultKeyStore();
    this.keyCacheMs = opts.keyCacheMs ?? 15_000;
  }

  /**
   * Loads (or makes and stores) this device's key pair and registers its
   * public key; resolves with the device's identity. Sealing calls it; call
   * it yourself to be reachable before your first message. A failed
   * registration is tried again on the next call.
   */
  async ready(): Promise<DeviceIdentity> {
    const user = await this.host.currentUser();
    if (!this.registered || this.registeredUser !== user) {
      this.registeredUser = user;
      const p = (async () => {
        const id = await this.identity();
        await this.host.registerDeviceKey(id.device, id.publicKey);
        return { user: id.user, device: id.device, publicKey: id.publicKey };
      })();
      this.registered = p;
      p.catch(() => {
        if (this.registered === p) this.registered = null;
      });
    }
    return this.registered;
  }

  /** This device's identity (loaded or made; not registered by this). */
  async device(): Promise<DeviceIdentity> {
    const id = await this.identity();
    return { user: id.user, device: id.device, publicKey: id.publicKey };
  }

  /** Forgets cached key directories (all, or one channel's): the next seal reads them again. */
  forgetKeys(channel?: string): void {
    if (channel === undefined) {
      this.channelKeys.clear();
      this.userKeys.clear();
    } else {
      this.channelKeys.delete(channel);
    }
  }

  /**
   * Seals `data` for every registered device of the channel's members (this
   * device included). Rejects when the directory cannot be read.
   */
  async seal(channel: string, data: unknown): Promise<Envelope> {
    const me = await this.ready();
    const id = await this.identity();
    const dir = await this.directory(channel);
    const recipients: Array<{ user: string; device: string; key: string }> = [];
    const seen = new Set<string>();
    for (const [user, list] of Object.entries(dir)) {
      for (const k of list) {
        const tag = `${user}/${k.device}`;
        if (seen.has(tag)) continue;
        seen.add(tag);
        recipients.push({ user, device: k.device, key: k.key });
      }
    }
    // This device reads its own messages back (history, other tabs) even
    // before the directory lists it.
    if (!seen.has(`${me.user}/${me.device}`)) recipients.push({ user: me.user, device: me.device, key: me.publicKey });

    const subtle = cryptoSubtle();
    const contentKey = randomBytes(32);
    const aes = await subtle.importKey('raw', contentKey, 'AES-GCM', false, ['encrypt']);
    const iv = randomBytes(12);
    const plain = utf8(JSON.stringify(data === undefined ? null : data));
    const ct = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: utf8(channel) }, aes, plain));
    const to: Envelope['to'] = [];
    // Each wrapped key is bound to this envelope: it opens this ciphertext
    // from this sender in this channel, nothing another member made with it.
    const aad = await wrapAad(channel, me.user, me.device, b64u(iv), b64u(ct));
    for (const r of recipients) {
      let wrap: CryptoKey;
      try {
        wrap = await this.wrapKey(id, r.key, info(me.user, me.device, r.user, r.device, channel));
      } catch {
        continue; // a malformed key in the directory: that device cannot read it
      }
      const kiv = randomBytes(12);
      const k = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv: kiv, additionalData: aad }, wrap, contentKey));
      to.push({ user: r.user, device: r.device, iv: b64u(kiv), k: b64u(k) });
    }
    return { e2ee: 1, from: { user: me.user, device: me.device }, iv: b64u(iv), ct: b64u(ct), to };
  }

  /**
   * Opens a publication: an envelope becomes its plaintext (`encrypted:
   * true`); one that cannot be opened keeps `data: null` with
   * `undecryptable` saying why. Anything else is returned as is. Never
   * rejects.
   */
  async open(pub: Publication): Promise<Publication> {
    if (!isEnvelope(pub.data)) return pub;
    const env = pub.data;
    try {
      const data = await this.openEnvelope(pub.channel, env, pub.info?.user);
      return { ...pub, data, encrypted: true };
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      return { ...pub, data: null, encrypted: true, undecryptable: why };
    }
  }

  private async openEnvelope(channel: string, env: Envelope, publisher: string | undefined): Promise<unknown> {
    const fromUser = str(env.from.user);
    const fromDevice = str(env.from.device);
    if (fromUser === undefined || fromDevice === undefined || typeof env.iv !== 'string') throw new Error('malformed envelope');
    // The server stamps who published: an envelope replayed by someone else,
    // or published without a user (server API), is not taken as the sender's.
    if (publisher === undefined) throw new Error('no publisher: the envelope is not from a user');
    if (publisher !== fromUser) throw new Error(`published by ${publisher}, sealed as ${fromUser}`);
    const id = await this.identity();
    const mine = env.to.find((t) => isObj(t) && t.user === id.user && t.device === id.device);
    if (!mine || typeof mine.iv !== 'string' || typeof mine.k !== 'string') throw new Error('not sealed for this device');
    const inf = info(fromUser, fromDevice, id.user, id.device, channel);
    const attempt = async (fresh: boolean): Promise<{ data?: unknown; fetched: boolean }> => {
      const { key, fetched } = await this.senderKey(fromUser, fromDevice, fresh);
      if (key === null) throw new Error(`no key registered for ${fromUser}/${fromDevice}`);
      try {
        const wrap = await this.wrapKey(id, key, inf);
        const subtle = cryptoSubtle();
        const aad = await wrapAad(channel, fromUser, fromDevice, env.iv, env.ct);
        const contentKey = await subtle.decrypt({ name: 'AES-GCM', iv: unb64u(mine.iv), additionalData: aad }, wrap, unb64u(mine.k));
        const aes = await subtle.importKey('raw', contentKey, 'AES-GCM', false, ['decrypt']);
        const plain = await subtle.decrypt({ name: 'AES-GCM', iv: unb64u(env.iv), additionalData: utf8(channel) }, aes, unb64u(env.ct));
        return { data: JSON.parse(new TextDecoder().decode(plain)), fetched };
      } catch {
        return { fetched };
      }
    };
    const first = await attempt(false);
    if ('data' in first) return first.data;
    // The sender's key may have changed (a re-registered device): read the
    // directory once more before giving up, unless it was just read.
    if (!first.fetched) {
      const second = await attempt(true);
      if ('data' in second) return second.data;
    }
    throw new Error('cannot be opened: wrong key, or tampered with');
  }

  /** A sender device's key from the directory (cached; read again on a miss or with `fresh`). */
  private async senderKey(user: string, device: string, fresh: boolean): Promise<{ key: string | null; fetched: boolean }> {
    const cached = fresh ? undefined : this.userKeys.get(user)?.keys.find((k) => k.device === device);
    if (cached) return { key: cached.key, fetched: false };
    // Messages opened together share one lookup.
    let lookup = this.userLookups.get(user);
    if (!lookup) {
      lookup = this.host.deviceKeys({ users: [user] }).then((all) => {
        const keys = all[user] ?? [];
        this.userKeys.set(user, { at: Date.now(), keys });
        return keys;
      }).finally(() => this.userLookups.delete(user));
      this.userLookups.set(user, lookup);
    }
    const keys = await lookup;
    return { key: keys.find((k) => k.device === device)?.key ?? null, fetched: true };
  }

  /** The channel's key directory, reused for `keyCacheMs`; a stale one when reading fails for now. */
  private async directory(channel: string): Promise<Record<string, DeviceKey[]>> {
    const cached = this.channelKeys.get(channel);
    if (cached && Date.now() - cached.at < this.keyCacheMs) return cached.keys;
    try {
      const keys = await this.host.deviceKeys({ channel });
      this.channelKeys.set(channel, { at: Date.now(), keys });
      for (const [user, list] of Object.entries(keys)) this.userKeys.set(user, { at: Date.now(), keys: list });
      return keys;
    } catch (e) {
      if (cached && e instanceof TidingsError && e.temporary) return cached.keys;
      throw e;
    }
  }

  private async wrapKey(id: Identity, peerKey: string, infoText: string): Promise<CryptoKey> {
    const tag = `${peerKey}|${infoText}`;
    let p = this.wrapKeys.get(tag);
    if (!p) {
      p = (async () => {
        const subtle = cryptoSubtle();
        const pub = await this.publicKey(peerKey);
        const bits = await subtle.deriveBits({ name: 'ECDH', public: pub }, id.privateKey, 256);
        const ikm = await subtle.importKey('raw', bits, 'HKDF', false, ['deriveKey']);
        return subtle.deriveKey(
          { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: utf8(infoText) },
          ikm,
          { name: 'AES-GCM', length: 256 },
          false,
          ['encrypt', 'decrypt'],
        );
      })();
      this.wrapKeys.set(tag, p);
      p.catch(() => this.wrapKeys.delete(tag));
      if (this.wrapKeys.size > 4096) this.wrapKeys.delete(this.wrapKeys.keys().next().value as string);
    }
    return p;
  }

  private publicKey(b64: string): Promise<CryptoKey> {
    let p = this.publicKeys.get(b64);
    if (!p) {
      p = (async () => {
        const raw = unb64u(b64);
        if (raw.length !== 65 || raw[0] !== 4) throw new Error('not an uncompressed P-256 point');
        return cryptoSubtle().importKey('raw', raw, { name: 'ECDH', namedCurve: 'P-256' }, false, []);
      })();
      this.publicKeys.set(b64, p);
      p.catch(() => this.publicKeys.delete(b64));
      if (this.publicKeys.size > 4096) this.publicKeys.delete(this.publicKeys.keys().next().value as string);
    }
    return p;
  }

  /** Loads or makes the key pair of the current user's device. */
  private async identity(): Promise<Identity> {
    const user = await this.host.currentUser();
    if (!user) throw new TidingsError(ErrorCode.PermissionDenied, 'e2ee: needs an authenticated user', false);
    if (this.identityP && this.identityUser === user) return this.identityP;
    this.identityUser = user;
    const p = this.loadIdentity(user);
    this.identityP = p;
    p.catch(() => {
      if (this.identityP === p) this.identityP = null;
    });
    return p;
  }

  private async loadIdentity(user: string): Promise<Identity> {
    const subtle = cryptoSubtle();
    const name = `tidings-e2ee:${user}${this.opts.device ? `:${this.opts.device}` : ''}`;
    const raw = await this.store.get(name);
    if (raw) {
      try {
        const s = JSON.parse(raw) as StoredIdentity;
        if (s.v === 1 && DEVICE_RE.test(s.device) && typeof s.publicKey === 'string' && isObj(s.privateJwk)) {
          const privateKey = await subtle.importKey('jwk', s.privateJwk, { name: 'ECDH', namedCurve: 'P-256' }, false, ['deriveBits']);
          return { user, device: s.device, publicKey: s.publicKey, privateKey };
        }
      } catch {
        // Unreadable: make a new one below.
      }
    }
    const pair = await subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']) as CryptoKeyPair;
    const publicKey = b64u(new Uint8Array(await subtle.exportKey('raw', pair.publicKey)));
    const privateJwk = await subtle.exportKey('jwk', pair.privateKey);
    const device = this.opts.device ?? b64u(randomBytes(12));
    const stored: StoredIdentity = { v: 1, device, publicKey, privateJwk };
    await this.store.set(name, JSON.stringify(stored));
    // Not extractable from here on.
    const privateKey = await subtle.importKey('jwk', privateJwk, { name: 'ECDH', namedCurve: 'P-256' }, false, ['deriveBits']);
    return { user, device, publicKey, privateKey };
  }
}

/** The additional data of a wrapped content key: SHA-256 of the channel, the sender and the envelope's `iv` and `ct`. */
async function wrapAad(channel: string, fromUser: string, fromDevice: string, iv: string, ct: string): Promise<Uint8Array<ArrayBuffer>> {
  const digest = await cryptoSubtle().digest('SHA-256', utf8(`${channel}|${fromUser}/${fromDevice}|${iv}|${ct}`));
  return new Uint8Array(digest);
}

function info(fromUser: string, fromDevice: string, toUser: string, toDevice: string, channel: string): string {
  return `${INFO_PREFIX}|${fromUser}/${fromDevice}|${toUser}/${toDevice}|${channel}`;
}

function cryptoSubtle(): SubtleCrypto {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (!c?.subtle) {
    throw new TidingsError(ErrorCode.BadRequest, 'e2ee: WebCrypto (crypto.subtle) is not available here (browsers need a secure context)', false);
  }
  return c.subtle;
}

function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(n);
  (globalThis as { crypto: Crypto }).crypto.getRandomValues(b);
  return b;
}

function utf8(s: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(s) as Uint8Array<ArrayBuffer>;
}

/** base64url without padding. */
export function b64u(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]!);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Decodes base64url (padding optional); throws on anything else. */
export function unb64u(s: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9_-]*$/.test(s)) throw new Error('bad base64url');
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** The recipients an envelope names (user and device of each wrapped key); empty for anything else. */
export function envelopeRecipients(v: unknown): Array<{ user: string; device: string }> {
  if (!isEnvelope(v)) return [];
  const out: Array<{ user: string; device: string }> = [];
  for (const t of v.to as unknown[]) {
    if (isObj(t) && typeof t.user === 'string' && typeof t.device === 'string') out.push({ user: t.user, device: t.device });
  }
  return out;
}
