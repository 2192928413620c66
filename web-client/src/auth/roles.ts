// The role a token's `docs` claim grants on a document, by the server's rule
// (server/tandem-server/src/auth.rs: `pattern_matches` and `Claims::role_for`). The client only
// uses it to open a read-only document read-only; the server decides. Pure, and checked by the
// unit tests against protocol-spec/vectors/role-patterns.json, which the Rust tests read too.

export type Role = 'read' | 'write' | 'admin'

const RANK: Record<Role, number> = { read: 1, write: 2, admin: 3 }

export function isRole(value: unknown): value is Role {
  return value === 'read' || value === 'write' || value === 'admin'
}

/**
 * Among the patterns that match, the most specific (most characters other than `*`) decides;
 * among equally specific ones the higher role wins. Entries whose value is not a role are
 * ignored. Null when nothing matches.
 */
export function roleFromPatterns(docs: Record<string, unknown>, doc: string): Role | null {
  let best: Role | null = null
  let bestLiterals = -1
  for (const [pattern, role] of Object.entries(docs)) {
    if (!isRole(role) || !patternMatches(pattern, doc)) continue
    const literals = [...pattern].filter((c) => c !== '*').length
    if (literals > bestLiterals || (literals === bestLiterals && best !== null && RANK[role] > RANK[best])) {
      best = role
      bestLiterals = literals
    }
  }
  return best
}

/**
 * `*` stands for any run of characters, `/` included; greedy with one backtrack point, as on
 * the server. The server compares UTF-8 bytes and this compares code points: for valid strings
 * the two agree, because a literal's UTF-8 can only match at a character boundary.
 */
export function patternMatches(pattern: string, name: string): boolean {
  const p = [...pattern]
  const n = [...name]
  let pi = 0
  let ni = 0
  let star = -1
  let starN = 0
  while (ni < n.length) {
    if (pi < p.length && p[pi] === '*') {
      star = pi++
      starN = ni
    } else if (pi < p.length && p[pi] === n[ni]) {
      pi++
      ni++
    } else if (star >= 0) {
      pi = star + 1
      ni = ++starN
    } else {
      return false
    }
  }
  return p.slice(pi).every((c) => c === '*')
}
