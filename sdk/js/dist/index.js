/**
 * The Tidings browser and Node SDK. Start with {@link TidingsClient}; see
 * docs/sdk.md for a guide.
 */
export { TidingsClient, VERSION, jwtExp } from './client.js';
export { Subscription } from './subscription.js';
export { TidingsError, ErrorCode, isTerminalCloseCode } from './errors.js';
export { Backoff } from './backoff.js';
export { MemoryOutboxStore, IndexedDbOutboxStore, defaultOutboxStore } from './outbox.js';
export { Optimistic } from './optimistic.js';
export { Typing, TypingWatcher } from './typing.js';
export { encodePositionVector, fnv1a32 } from './position.js';
export { Inbox, CursorSync, computeDeliveryState } from './chat.js';
export { E2ee, MemoryKeyStore, LocalStorageKeyStore, IndexedDbKeyStore, defaultKeyStore, isEnvelope, envelopeRecipients, } from './e2ee.js';
export { Emitter } from './emitter.js';
