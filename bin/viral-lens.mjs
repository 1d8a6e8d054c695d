#!/usr/bin/env node
// Entry point (`npx viral-lens …`, `npm run viral-lens`). Runs the JavaScript that bin/build.mjs puts in dist/ (built by
// `prepare` on npm install / npm ci), which starts in a fraction of the time tsx needs to compile the sources on
// every call. When dist/ is missing or older than a source file (an edited checkout), it says so and runs the sources
// through tsx instead, so a stale build is never what answers.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Why dist/ cannot be used ('' when it can): missing, or some source newer than the build. */
function staleReason() {
  let stamp;
  try {
    stamp = JSON.parse(readFileSync(join(root, 'dist', 'build.json'), 'utf8'));
  } catch {
    return 'dist/ is missing';
  }
  const newer = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory() ? newer(p) : e.name.endsWith('.ts') && statSync(p).mtimeMs > stamp.newestSourceMtimeMs) return true;
    }
    return false;
  };
  for (const d of ['src', 'analysis', 'server', 'cli']) if (existsSync(join(root, d)) && newer(join(root, d))) return `dist/ is older than ${d}/`;
  return '';
}

const reason = process.env.VIRAL_LENS_TSX === '1' ? 'VIRAL_LENS_TSX=1' : staleReason();
let main;
if (reason === '') {
  ({ main } = await import(pathToFileURL(join(root, 'dist', 'cli', 'main.js')).href));
} else {
  if (process.env.VIRAL_LENS_TSX !== '1')
    process.stderr.write(`viral-lens: ${reason}; running the TypeScript sources through tsx (slower start; \`npm run build\` refreshes dist/)\n`);
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import(pathToFileURL(join(root, 'cli', 'main.ts')).href));
}
try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`viral-lens: internal error (please report): ${err?.stack ?? err}\n`);
  process.exitCode = 1;
}
