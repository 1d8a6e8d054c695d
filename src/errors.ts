/**
 * Errors caused by the user's input (files, flags, manifests). The CLI prints their message on one line and exits
 * with code 2; anything else is a bug and keeps its stack trace.
 */
export class InputError extends Error {
  override readonly name = 'InputError';
  constructor(message: string) {
    super(message);
  }
}

export function inputError(message: string): never {
  throw new InputError(message);
}
