/**
 * Server-sent events (`GET /api/events`): one long-lived response per open page. Events are JSON:
 * - `runs`:   {added, removed, changed} capture ids after a rescan of RUNS_DIR (a new step, a grown capture);
 * - `ingest`: a progress report POSTed by a training run (see POST /api/ingest);
 * - `job`:    {key, kind, state, progress?} of analyses running in the workers (for progress text on the page).
 * A comment line every 15 s keeps proxies and the browser from timing the stream out.
 */
import type { ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';

export class EventHub {
  private readonly clients = new Set<ServerResponse>();
  private readonly heartbeat: NodeJS.Timeout;
  private nextId = 1;

  constructor(heartbeatMs = 15000) {
    this.heartbeat = setInterval(() => {
      for (const c of this.clients) c.write(': keep-alive\n\n');
    }, heartbeatMs);
    this.heartbeat.unref();
  }

  get size(): number {
    return this.clients.size;
  }

  send(event: string, data: unknown): void {
    const text = `id: ${this.nextId++}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const c of this.clients) c.write(text);
  }

  /** Fastify handler: takes over the raw response and keeps it open until the client leaves. */
  handle(request: FastifyRequest, reply: FastifyReply): void {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    // Reconnect quickly after a server restart.
    res.write('retry: 2000\n\n');
    res.write(`event: hello\ndata: ${JSON.stringify({ time: new Date().toISOString() })}\n\n`);
    this.clients.add(res);
    const drop = () => this.clients.delete(res);
    request.raw.on('close', drop);
    res.on('close', drop);
  }

  close(): void {
    clearInterval(this.heartbeat);
    for (const c of this.clients) c.end();
    this.clients.clear();
  }
}
