// Streaming a run's (or a session's) events with fetch, so the request can carry
// `Authorization: Bearer ...` (a browser's EventSource cannot), resuming after a dropped
// connection with `Last-Event-ID` so no event is missed or repeated (docs/api.md, "Event streams").
import type { components } from "./schema";

type RunEvent = components["schemas"]["RunEvent"];

export const TERMINAL_TYPES: ReadonlySet<string> = new Set([
  "run.succeeded", "run.failed", "run.cancelled", "run.timed_out",
]);

export interface StreamOptions {
  /** An API key (`aos_...`) or a JWT, sent as `Authorization: Bearer <token>`. */
  token: string;
  /** Resume after this event id (the `seq` of the last event processed). */
  lastEventId?: number;
  /** Stops the stream (and any reconnect). */
  signal?: AbortSignal;
  /** How long to wait before reconnecting when the server gave no `Retry-After` (ms). */
  retryMs?: number;
  /** How many reconnects in a row may fail before giving up. */
  maxRetries?: number;
  /** `fetch` to use (defaults to the global one). */
  fetch?: typeof fetch;
}

class StreamError extends Error {
  constructor(readonly status: number, readonly body: string) {
    super(`event stream refused: HTTP ${status}: ${body.slice(0, 300)}`);
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** The `data:` payloads of whole SSE events in `buffer`, and what is left of an unfinished one. */
function parseEvents(buffer: string): { events: string[]; rest: string } {
  const events: string[] = [];
  const blocks = buffer.replace(/\r\n?/g, "\n").split("\n\n");
  const rest = blocks.pop() ?? "";
  for (const block of blocks) {
    const data = block.split("\n").filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5));
    if (data.length > 0) events.push(data.join("\n"));  // comment lines (keep-alive) carry no data
  }
  return { events, rest };
}

/**
 * Every event of the stream at `url` (e.g. `${api}/v1/runs/${runId}/events`), oldest first, each
 * once. A run's stream ends after its terminal event; a session's goes on until `signal` aborts.
 * A dropped connection is reopened with `Last-Event-ID` set to the last event yielded; `429` and
 * `503` are retried after their `Retry-After`; any other refusal throws.
 */
export function streamEvents(url: string, options: StreamOptions): AsyncGenerator<RunEvent, void, undefined> {
  return follow((lastId) => ({ url, init: { headers: headersFor(options.token, lastId) } }),
    url.includes("/v1/runs/"), options);
}

/** The body of a run's POST (`RunCreate` in the API's schema). */
export type NewRun = components["schemas"]["RunCreate"];

export interface NewRunOptions extends Omit<StreamOptions, "lastEventId"> {
  /** The key that makes a resent POST answer the run the first one made (default: a new UUID). */
  idempotencyKey?: string;
}

/**
 * Start a run in session `sessionId` of the API at `api` and stream its events in one request
 * (`POST /v1/sessions/{id}/runs` with `Accept: text/event-stream`): from `run.queued`, whose
 * `run_id` names the run, to its terminal event. Until the first event arrives, a retry sends the
 * same POST with the same `Idempotency-Key`, so the run starts once and streams from its start;
 * after it, a drop resumes with `GET /v1/runs/{id}/events` and `Last-Event-ID`. A refusal (an
 * unknown session, a busy one, a bad body) throws with the API's error body.
 */
export function streamNewRun(api: string, sessionId: string, run: NewRun,
                             options: NewRunOptions): AsyncGenerator<RunEvent, void, undefined> {
  const key = options.idempotencyKey ?? `aos-ts-${crypto.randomUUID()}`;
  const body = JSON.stringify(run);
  let runId: string | undefined;
  return follow((lastId) => {
    if (runId !== undefined) {
      return { url: `${api}/v1/runs/${runId}/events`, init: { headers: headersFor(options.token, lastId) } };
    }
    const headers = { ...headersFor(options.token, undefined), "Content-Type": "application/json",
                      "Idempotency-Key": key };
    return { url: `${api}/v1/sessions/${sessionId}/runs`, init: { method: "POST", headers, body } };
  }, true, options, (event) => { runId ??= event.run_id; });
}

function headersFor(token: string, lastId: number | undefined): Record<string, string> {
  const headers: Record<string, string> = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
  if (lastId !== undefined) headers["Last-Event-ID"] = String(lastId);
  return headers;
}

type Opening = (lastId: number | undefined) => { url: string; init: RequestInit };

/** The events of the streams `open` makes, reopened after each drop (see `streamEvents`). */
async function* follow(open: Opening, isRun: boolean, options: StreamOptions,
                       seen: (event: RunEvent) => void = () => {}): AsyncGenerator<RunEvent, void, undefined> {
  const doFetch = options.fetch ?? fetch;
  let lastId = options.lastEventId;
  let failures = 0;
  while (!options.signal?.aborted) {
    const { url, init } = open(lastId);
    let response: Response;
    try {
      response = await doFetch(url, { ...init, signal: options.signal ?? null, cache: "no-store" });
    } catch (error) {
      if (options.signal?.aborted) return;
      if (++failures > (options.maxRetries ?? 10)) throw error;
      await sleep(options.retryMs ?? 1000, options.signal);
      continue;
    }
    if (response.status === 429 || response.status === 503) {
      const wait = Number(response.headers.get("Retry-After") ?? "") * 1000;
      await response.body?.cancel();
      if (++failures > (options.maxRetries ?? 10)) throw new StreamError(response.status, "");
      await sleep(wait > 0 ? wait : options.retryMs ?? 1000, options.signal);
      continue;
    }
    if (!response.ok || response.body === null) {
      throw new StreamError(response.status, await response.text());
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let ended = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        failures = 0;
        const parsed = parseEvents(buffer + value);
        buffer = parsed.rest;
        for (const data of parsed.events) {
          const event = JSON.parse(data) as RunEvent;
          lastId = event.seq;
          seen(event);
          yield event;
          if (TERMINAL_TYPES.has(event.type) && isRun) ended = true;
        }
      }
    } catch (error) {
      if (options.signal?.aborted) return;
      if (++failures > (options.maxRetries ?? 10)) throw error;
    } finally {
      reader.releaseLock();
    }
    // A run's stream closes after its terminal event; any other close is a drop: reconnect.
    if (ended) return;
    await sleep(options.retryMs ?? 1000, options.signal);
  }
}
