/**
 * What every route module of the dashboard shares: the state the routes read (one RouteContext, made once by
 * buildApp), the error a route throws for an HTTP status, and the JSON schemas more than one page's routes use.
 */
import type { FastifyReply } from 'fastify';
import type { EventHub } from '../events.js';
import type { JobRunner } from '../jobs.js';
import type { RunsIndex } from '../runs.js';

/** A training run's latest progress report (POST /api/ingest), shown on the overview until the files appear. */
export interface LiveRun {
  run: string;
  step: number | null;
  variant: string;
  model: string;
  samples: number;
  layers: number;
  targets: string[];
  received: string;
  reports: number;
}

export interface RouteContext {
  index: RunsIndex;
  runner: JobRunner;
  hub: EventHub;
  /** Engine for analyses (createEngine name). */
  engine: string;
  /** Bearer token of POST /api/ingest. */
  token: string;
  /** Latest ingest report per run, oldest first. */
  live: Map<string, LiveRun>;
}

/** A response with this status and a message; the app's error handler turns it into the JSON error body. */
export class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
  ) {
    super(message);
  }
}

/** Aborted when the client goes away before the response is complete. */
export function requestSignal(reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  return ac.signal;
}

export const emptyQuery = { type: 'object', additionalProperties: false, properties: {} } as const;
