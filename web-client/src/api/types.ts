// The contract types: the JSON shapes of the HTTP API and of the live event stream, as far as
// the client reads them. protocol-spec/ is the contract (http.md, files.md, history.md,
// activity.md); a field changes there first and then here, in this one file.

/** Who did something, as the server names them. */
export interface Actor {
  sub: string | null
  name: string
}

/**
 * A WebDAV lock covering a file or document (protocol-spec/webdav.md, "Locks"): writes from
 * anyone but its holder are refused until it is unlocked or `expires_at` passes.
 */
export interface LockInfo {
  /** The locked path: the entry's own, or a folder above it for a deep lock. */
  path: string
  deep: boolean
  shared: boolean
  /** The text of the owner the WebDAV client sent, if any. */
  owner: string | null
  /** The account holding it; null without authentication. */
  principal: string | null
  /** Ms since the epoch. */
  expires_at: number
}

/** A person present in a document, as `GET /api/docs` reports it. */
export interface PresentUser {
  name: string
  color: string | null
}

/** One row of `GET /api/docs`. */
export interface DocSummary {
  name: string
  size_bytes: number
  peers: number
  updated_ms: number | null
  loaded: boolean
  users?: PresentUser[]
  lock?: LockInfo
}

/** One stored file, or one version of it (`GET /api/files`, protocol-spec/files.md). */
export interface FileSummary {
  path: string
  name: string
  size: number
  content_type: string
  sha256: string
  version: number
  uploader: Actor
  uploaded_ms: number
  n_versions: number
  lock?: LockInfo
}

/** One saved version of a document (`GET /api/docs/{name}/versions`, protocol-spec/history.md). */
export interface VersionSummary {
  id: number
  kind: 'named' | 'auto' | 'restore'
  name: string | null
  author: Actor
  created_ms: number
  seq: number
  size_bytes: number
  authors?: Actor[]
}

/** One line of the activity feed (`GET /api/activity`, protocol-spec/activity.md). */
export interface ActivityEntry {
  id: number
  kind: string
  path: string
  actor: Actor
  started_ms: number
  ended_ms: number
  n_updates?: number
  details?: Record<string, unknown>
}

/** A page of the activity feed, newest first; `next` is the cursor of the page after it. */
export interface ActivityPage {
  entries: ActivityEntry[]
  next: string | number | null
}

/** The query of `GET /api/activity`. */
export interface ActivityFilter {
  doc?: string
  user?: string
  before?: string | number
  limit?: number
}

/** The messages of `GET /api/events` (the `type` tag), as far as the client uses them. */
export type LiveEvent =
  | { type: 'hello' }
  | { type: 'resync' }
  | { type: 'doc_changed'; doc: string; actor: Actor; at_ms: number }
  | { type: 'doc_presence'; doc: string; peers: number }
  | { type: 'file_uploaded'; path: string; version: number; actor: Actor }
  | { type: 'file_renamed'; from: string; to: string; actor: Actor }
  | { type: 'file_deleted'; path: string; actor: Actor }
  | { type: 'version_created'; doc: string; version: number }
  | { type: 'version_restored'; doc: string; version: number }
  | { type: 'activity'; entry: ActivityEntry }
  | { type: 'file_locked'; path: string; lock: LockInfo }
  | { type: 'file_unlocked'; path: string; lock: LockInfo; reason: string; still_locked: boolean }

/** `GET /api/admin/overview` (administrators only; protocol-spec/http.md): this node right now. */
export interface AdminOverview {
  /** Server time and process start, ms since the epoch. */
  now: number
  started_at: number
  /** Live documents, most peers first, possibly cut short: `docs_total` counts them all. */
  docs: { name: string; peers: number; bytes: number }[]
  docs_total: number
  /** Open WebSocket connections by protocol (`y-websocket`, `hocuspocus`). */
  connections: Record<string, number>
  /** Per workspace (top-level folder), largest first; `quota_bytes` 0 means unlimited. */
  storage: { workspace: string; bytes: number; files: number; quota_bytes: number }[]
  /** Recent failed webhook deliveries, newest first. */
  webhooks_failing: { webhook: string; url: string; event: string; at: number; error: string; attempts: number }[]
  /** The newest warn/error log events of the process, newest first; `fields` as text. */
  errors: { at: number; level: string; target: string; message: string; fields?: Record<string, string> }[]
}

/** One sample of `GET /api/admin/series`, taken every `interval_seconds`. */
export interface AdminSample {
  at: number
  updates_per_second: number
  /** Null when no commit happened in the interval. */
  commit_latency_ms: number | null
  connected_users: number
  connections: number
}

/** `GET /api/admin/series`: the last hour, oldest first. */
export interface AdminSeries {
  interval_seconds: number
  points: AdminSample[]
}
