/**
 * Errors caused by the user's input (files, flags, manifests). The CLI prints their message on one line and exits
 * with code 2; anything else is a bug and keeps its stack trace.
 *
 * Messages quote what they found (tensor names, header text, lists of keys), and a hostile file can make that
 * megabytes long or put line breaks in it. So every message is made one line (CR/LF shown as \r, \n) and at most
 * MAX_MESSAGE_CHARS long, keeping its start and its end, here, once, rather than at every call site.
 */
export const MAX_MESSAGE_CHARS = 2000;
/** Characters kept from the end of an over-long message (it often names the cause last). */
const TAIL_CHARS = 400;

export function boundMessage(message: string): string {
  let m = message.includes('\n') || message.includes('\r') ? message.replace(/\r/g, '\\r').replace(/\n/g, '\\n') : message;
  if (m.length > MAX_MESSAGE_CHARS) {
    const head = MAX_MESSAGE_CHARS - TAIL_CHARS - 40;
    m = `${m.slice(0, head)} … [${m.length - head - TAIL_CHARS} characters omitted] … ${m.slice(m.length - TAIL_CHARS)}`;
  }
  return m;
}

export class InputError extends Error {
  override readonly name = 'InputError';
  constructor(message: string) {
    super(boundMessage(message));
  }
}

/**
 * Bad value of one named parameter (k, metric, preprocess, tokens, ...). The library names the parameter as the
 * library calls it; each front end says it in its own words (the CLI as its flag, `--topk`; the server as its query
 * field), so no library message hard-codes a command-line flag.
 */
export class ParamError extends InputError {
  constructor(
    readonly param: string,
    readonly detail: string,
  ) {
    super(`${param}: ${detail}`);
  }
}

export function inputError(message: string): never {
  throw new InputError(message);
}

/** A list for a message: at most `max` items, then "… and N more". */
export function listSome(items: readonly string[], max = 10, sep = ', '): string {
  if (items.length <= max) return items.join(sep);
  return `${items.slice(0, max).join(sep)}${sep}… and ${items.length - max} more`;
}

/** A name for a message, shortened to `max` characters (names come from files and may be huge). */
export function clip(name: string, max = 120): string {
  return name.length > max ? `${name.slice(0, max)}…(${name.length} chars)` : name;
}

/** The same, in quotes. */
export function quoteName(name: string, max = 120): string {
  return `'${clip(name, max)}'`;
}
