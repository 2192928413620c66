// Lint rules for the web client (`npm run lint`; `.ci/run` runs it via build-web.sh --lint).
// Type-aware: the rules that need types (floating promises, misused promises) catch the mistakes
// this event-driven code is prone to. Formatting is Prettier's job (`npm run format:check`), so
// every stylistic rule is off (eslint-config-prettier).
import js from '@eslint/js'
import prettier from 'eslint-config-prettier'
import tseslint from 'typescript-eslint'

/** Files matching `files` may not import from the folders `above` them. */
function layer(files, above) {
  return {
    files: [files],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: above.map((folder) => ({
            group: [`../${folder}/*`, `../../${folder}/*`],
            message: `${files} sits below ${folder}/: move the shared part down instead`
          }))
        }
      ]
    }
  }
}

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'public/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname }
    },
    rules: {
      // `void promise` marks a deliberately unawaited call.
      '@typescript-eslint/no-floating-promises': ['error', { ignoreVoid: true }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      // Y.Text's own toString is its text.
      '@typescript-eslint/no-base-to-string': ['error', { ignoredTypeNames: ['YText', 'Text'] }],
      eqeqeq: ['error', 'always', { null: 'ignore' }]
    }
  },
  // The feature folders depend one way: ui <- auth <- api <- doc, workspace, admin <- main.ts.
  layer('src/ui/**', ['auth', 'api', 'doc', 'workspace', 'admin']),
  layer('src/auth/**', ['api', 'doc', 'workspace', 'admin']),
  layer('src/api/**', ['doc', 'workspace', 'admin']),
  layer('src/admin/**', ['doc', 'workspace']),
  {
    files: ['eslint.config.js'],
    extends: [tseslint.configs.disableTypeChecked]
  },
  prettier
)
