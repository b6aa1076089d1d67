// The package README's example is `readme-example.ts`, which `npm run typecheck` compiles
// against the package's .d.ts and the `readme_example` scenario runs: this fails when the
// README's first ```js block and the file differ, so neither can drift (docs/testing.md).
import fs from 'node:fs';

const readme = fs.readFileSync(new URL('../../client-wasm/README.md', import.meta.url), 'utf8');
const block = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
const file = fs.readFileSync(new URL('./readme-example.ts', import.meta.url), 'utf8');
if (block !== file) {
  console.error('client-wasm/README.md: its ```js example differs from tests/browser/readme-example.ts; copy one into the other');
  process.exit(1);
}
