// The admin JSON API (protocol-spec/http.md): what the admin view shows. Both calls need an
// administrator's token; anyone else gets a 403 `not_admin`, which arrives as an `ApiError`.
import { getJson } from './http'
import type { AdminOverview, AdminSeries } from './types'

/** Live documents, connections, storage, failing webhooks and recent errors of this node. */
export async function loadOverview(): Promise<AdminOverview> {
  return await getJson<AdminOverview>('/api/admin/overview', 'admin overview')
}

/** The last hour of samples: updates/s, commit latency, connected users. */
export async function loadSeries(): Promise<AdminSeries> {
  return await getJson<AdminSeries>('/api/admin/series', 'admin series')
}
