// The activity feed over HTTP (protocol-spec/activity.md).
import { getJson } from './http'
import type { ActivityFilter, ActivityPage } from './types'

/** A page of the activity feed, newest first; `next` fetches the page after it. */
export async function listActivity(filter: ActivityFilter = {}): Promise<ActivityPage> {
  const query = new URLSearchParams()
  for (const [key, value] of Object.entries(filter)) {
    if (value !== undefined && value !== null) query.set(key, String(value))
  }
  return await getJson<ActivityPage>(`/api/activity?${query.toString()}`, 'activity')
}
