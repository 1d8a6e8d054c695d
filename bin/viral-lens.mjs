#!/usr/bin/env node
// Installed entry point (`npx viral-lens …`): the package ships TypeScript sources and runs them through tsx.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../cli/main.ts');
try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`viral-lens: internal error (please report): ${err?.stack ?? err}\n`);
  process.exitCode = 1;
}
