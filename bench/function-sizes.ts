/**
 * `node --import tsx bench/function-sizes.ts [--over N] [DIR ...]`: the longest functions (lines, including their
 * body) and files of the runtime sources, for the refactoring notes and for keeping functions short (issue: no function
 * over ~60 lines without a reason in a comment). Uses the TypeScript compiler's parser, so arrow functions, methods
 * and nested functions are each counted as written.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';

const args = process.argv.slice(2);
const overAt = args.indexOf('--over');
const over = overAt >= 0 ? Number(args[overAt + 1]) : 60;
const dirs = args.filter((a, i) => a !== '--over' && i !== overAt + 1);
const roots = dirs.length > 0 ? dirs : ['src', 'analysis', 'demo', 'server', 'cli'];

function sources(dir: string, out: string[] = []): string[] {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (e.name !== 'node_modules' && e.name !== 'vendor') sources(p, out);
    } else if ((e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) || (e.name.endsWith('.js') && dir.endsWith('public'))) out.push(p);
  }
  return out;
}

interface Fn { file: string; name: string; lines: number }
const fns: Fn[] = [];
const fileLines: { file: string; lines: number }[] = [];
for (const file of roots.flatMap((d) => sources(d))) {
  const text = readFileSync(file, 'utf8');
  fileLines.push({ file, lines: text.split('\n').length });
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const visit = (node: ts.Node): void => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const start = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line;
      const end = sf.getLineAndCharacterOfPosition(node.getEnd()).line;
      let name = node.name ? node.name.getText(sf) : '';
      if (!name && ts.isVariableDeclaration(node.parent)) name = node.parent.name.getText(sf);
      if (!name && ts.isPropertyAssignment(node.parent)) name = node.parent.name.getText(sf);
      fns.push({ file: relative('.', file), name: `${name || '(anonymous)'}:${start + 1}`, lines: end - start + 1 });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
}
fns.sort((a, b) => b.lines - a.lines);
fileLines.sort((a, b) => b.lines - a.lines);
const long = fns.filter((f) => f.lines > over);
process.stdout.write(`functions over ${over} lines: ${long.length}\n`);
for (const f of long) process.stdout.write(`${String(f.lines).padStart(5)}  ${f.file} ${f.name}\n`);
process.stdout.write(`largest files:\n`);
for (const f of fileLines.slice(0, 15)) process.stdout.write(`${String(f.lines).padStart(5)}  ${f.file}\n`);
process.stdout.write(`total: ${fileLines.reduce((s, f) => s + f.lines, 0)} lines in ${fileLines.length} files\n`);
