/**
 * The Tidings browser and Node SDK. Start with {@link TidingsClient}; see
 * docs/sdk.md for a guide.
 */
export { TidingsClient, VERSION, jwtExp } from './client.js';
export type { ClientOptions, ClientEvents, ConnectionState, ConnectedEvent, DisconnectedEvent, StateEvent, SubscribeOptions, } from './client.js';
export { Subscription } from './subscription.js';
export type { HistoryOptions, HistoryResult, Priority, PublishOptions, ResetEvent, SubscribedEvent, SubscriptionEvents, SubscriptionOptions, SubscriptionState, } from './subscription.js';
export { TidingsError, ErrorCode, isTerminalCloseCode } from './errors.js';
export { Backoff } from './backoff.js';
export { MemoryOutboxStore, IndexedDbOutboxStore, defaultOutboxStore } from './outbox.js';
export type { OutboxEntry, OutboxStore } from './outbox.js';
export { Optimistic } from './optimistic.js';
export type { OptimisticEvents, OptimisticOptions, PendingItem, PendingStatus } from './optimistic.js';
export { Typing, TypingWatcher } from './typing.js';
export type { TypingOptions } from './typing.js';
export { encodePositionVector, fnv1a32 } from './position.js';
export { Inbox, CursorSync, computeDeliveryState } from './chat.js';
export type { Conversation, Cursors, DeliveryState, DeviceKey, GroupDeliveryState, InboxEvent, InboxEvents, InboxOptions, InboxPage, MembersPage, PageOptions, ReceiptEvent, ReceiptSummary, UserReceipt, } from './chat.js';
export { E2ee, MemoryKeyStore, LocalStorageKeyStore, IndexedDbKeyStore, defaultKeyStore, isEnvelope, envelopeRecipients, } from './e2ee.js';
export type { DeviceIdentity, E2eeOptions, Envelope, KeyStore } from './e2ee.js';
export { Emitter } from './emitter.js';
export type { Listener } from './emitter.js';
export type { Position, PresenceEntry, Publication, PublicationInfo, PublishResult, TransportName, } from './types.js';
export type { WebSocketCtor, FetchFn } from './transport.js';
