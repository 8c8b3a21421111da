/** Wire and public types shared by the modules. */

/** A position in a channel: the last publication processed. */
export interface Position {
  /** Offset of the last publication processed (0: none yet). */
  offset: number;
  /** The channel's epoch (the incarnation of its history). */
  epoch: string;
}

/** Who published: present when a client published. */
export interface PublicationInfo {
  /** The publishing connection's id. */
  client: string;
  /** The publisher's user id, `""` when anonymous. */
  user: string;
  /** The `info` claim of the publisher's token, if any. */
  info?: unknown;
}

/** A publication as delivered to the app. */
export interface Publication<T = unknown> {
  /** The channel it was published in. */
  channel: string;
  /** The payload. */
  data: T;
  /** Its offset; absent in ephemeral channels. */
  offset?: number;
  /** The channel's epoch; absent in ephemeral channels. */
  epoch?: string;
  /** Who published it; absent when the server API published. */
  info?: PublicationInfo;
  /** Tags given by the publisher. */
  tags?: Record<string, string>;
  /**
   * Server time of the publish (ms since the Unix epoch): in history and
   * recovery, and on live pushes in namespaces with `push_time`.
   */
  time?: number;
  /** What it is the latest value of within its channel (`key` on publish). */
  key?: string;
  /** The channel's whole state (published with `snapshot`); delivered as a `snapshot` event. */
  snapshot?: boolean;
  /**
   * It came end-to-end encrypted (an E2EE envelope) and was opened: `data`
   * is the plaintext. With `undecryptable`, it could not be opened.
   */
  encrypted?: boolean;
  /**
   * Why an E2EE envelope could not be opened (not addressed to this device,
   * unknown sender key, tampered, ...); `data` is then null.
   */
  undecryptable?: string;
}

/** A presence entry: one subscribed connection. */
export interface PresenceEntry {
  /** The connection id. */
  client: string;
  /** The user id, `""` when anonymous. */
  user: string;
  /** The token's `info` claim, if any. */
  info?: unknown;
}

/** The answer to a publish. */
export interface PublishResult {
  /** The publication's offset; absent in ephemeral channels. */
  offset?: number;
  /** The channel's epoch; absent in ephemeral channels. */
  epoch?: string;
}

/** The name of a transport. */
export type TransportName = 'websocket' | 'sse' | 'poll';
