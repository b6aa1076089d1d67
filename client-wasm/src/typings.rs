//! The TypeScript shapes of options, values and event payloads (`.d.ts` via
//! `typescript_custom_section`); `on`/`off` are typed here by event name.

use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** Where the device connects and stores; `database` names the IndexedDB database (one per device). */
export interface OpenOptions {
  database: string;
  /** Mediator base, e.g. "wss://example.org" (stored; optional on later opens). */
  mediatorUrl?: string;
  /** Base of `/directory/*`; defaults to the mediator's origin over http(s). */
  directoryUrl?: string;
  /** This device's name shown to the other devices. */
  deviceLabel?: string;
}
export interface CreateOptions extends OpenOptions { mediatorUrl: string; }
export interface ImportOptions extends CreateOptions { backup: string; password: string; }

/** "contact/ABCD1234" | "group/CREATOR/HEXID" | "list/HEXID" */
export type ConversationIdString = string;
export type MessageState = "pending" | "sent" | "delivered" | "received" | "read";

export interface Message {
  /** "SENDER/HEXID" */
  key: string;
  conversation: ConversationIdString;
  sender: string;
  outgoing: boolean;
  text: string;
  /** Unix ms */
  createdAt: number;
  state: MessageState;
  seq: number;
  /** Unix ms of the sender's last edit (Threema's edit message), or null */
  editedAt: number | null;
  /** Unix ms when the sender deleted it for everyone (its text is then empty), or null */
  deletedAt: number | null;
  /** Emoji reactions (Threema's), in the order they came; one person may put several */
  reactions: { identity: string; emoji: string }[];
}
export interface ConversationSummary { id: ConversationIdString; unread: number; lastMessage: Message | null; }
export interface Contact {
  identity: string; displayName: string; firstName: string; lastName: string; nickname: string;
  /** hex */
  publicKey: string; createdAt: number;
}
export interface Group {
  /** "CREATOR/HEXID" */
  id: string; conversation: ConversationIdString; creator: string; name: string; members: string[];
  userState: "member" | "kicked" | "left"; createdAt: number;
}
export interface DistributionList { id: string; conversation: ConversationIdString; name: string; members: string[]; createdAt: number; }
export interface Settings { readReceipts: boolean; typingIndicators: boolean; blockUnknown: boolean; blockedIdentities: string[]; }
export interface Device {
  id: string; thisDevice: boolean; label: string; platform: string; platformDetails: string; appVersion: string;
  /** null when the mediator did not say */
  online: boolean | null; since: number | null;
}
export type ConnectionEvent =
  | { state: "connecting" }
  | { state: "connected" }
  | { state: "online" }
  | { state: "disconnected"; code: number; reason: string; retryAt?: number; stopped?: string };

/** Event names and their payloads for `on` / `off`. */
export interface TandemEvents {
  connection: ConnectionEvent;
  syncProgress: { received: number; total: number };
  leader: { leader: boolean };
  message: { conversation: ConversationIdString; key: string; message: Message | null };
  /** A message was edited, deleted or reacted to; `message` is null once it was deleted on this device. */
  messageChanged: { conversation: ConversationIdString; key: string; message: Message | null };
  messageState: { key: string; conversation: ConversationIdString | null; state: MessageState };
  conversations: ConversationSummary[];
  contact: { identity: string; contact: Contact | null };
  contactNotFound: { identity: string; message: string };
  group: { id: string; group: Group | null };
  distributionList: { id: string; list: DistributionList | null };
  settings: Settings;
  profile: { nickname: string };
  typing: { identity: string; typing: boolean };
  devices: Device[];
  newDeviceSync: { deviceId: string; messages: number };
  /** A change to shared state was given up after the mediator refused it three times in a row. */
  syncFailed: { scope: string; code: number; reason: string };
  alert: { text: string };
  /**
   * The chat server's clock (from its login-ack) differs from this device's by more than 20
   * minutes; `offsetMs` is this device's clock minus the server's (positive: ahead). A notice:
   * nothing stops. Not sent when the server gives no time.
   */
  clockOffset: { offsetMs: number };
  dropped: { reason: string };
  error: { message: string };
}

export interface TandemClient {
  on<K extends keyof TandemEvents>(name: K, callback: (payload: TandemEvents[K]) => void): void;
  off<K extends keyof TandemEvents>(name: K, callback: (payload: TandemEvents[K]) => void): void;
}
"#;
