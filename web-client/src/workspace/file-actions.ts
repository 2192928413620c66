// What a file row's buttons do: rename and delete (the tree then follows the live events, not
// the answer), and the list of earlier versions shown under the row.
import { deleteFile, fileHref, fileVersions, moveFile } from '../api/files'
import { errorMessage } from '../api/http'
import { docNameProblem } from '../api/names'
import { h } from '../ui/dom'
import { ago, bytes } from '../ui/format'
import type { FileActions } from './tree-view'

/** The actions, reporting a refusal through `report`. */
export function fileActions(report: (problem: string) => void): FileActions {
  const fail = (error: unknown): void => report(errorMessage(error))
  return {
    rename: (file) => {
      const to = prompt(`Rename ${file.path} to:`, file.path)?.trim()
      if (!to || to === file.path) return
      const nameProblem = docNameProblem(to)
      if (nameProblem !== null) {
        report(nameProblem)
        return
      }
      moveFile(file.path, to).catch(fail)
    },
    remove: (file) => {
      if (!confirm(`Delete ${file.path} and all its versions?`)) return
      deleteFile(file.path).catch(fail)
    },
    versions: (file, host) => {
      if (host.childElementCount > 0) {
        host.replaceChildren()
        return
      }
      fileVersions(file.path)
        .then((versions) => {
          host.replaceChildren(
            h(
              'ol',
              { class: 'version-list' },
              ...versions.map((v) =>
                h(
                  'li',
                  { 'data-version': v.version },
                  h('a', { href: fileHref(file.path, v.version), download: file.name }, `Version ${v.version}`),
                  ` · ${bytes(v.size)} · ${v.uploader.name} · ${ago(v.uploaded_ms)}`
                )
              )
            )
          )
        })
        .catch(fail)
    }
  }
}
