// Talking to the cavsync API (same origin). Every call has a timeout; a failure to reach the server is an
// ApiUnreachable (the banner says so), an HTTP error an ApiError with the server's `detail`. A 401 asks for the API
// key (session.js) and, once a session is open, sends the call again.
import { askForKey } from "./session.js";

const TIMEOUT_MS = 180000;
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export class ApiUnreachable extends Error {}

/** Subscribe to reachability changes: fn(true) after a successful answer, fn(false, message) on failure. */
export function onReachability(fn) {
  listeners.add(fn);
}

function report(reachable, message) {
  for (const fn of listeners) fn(reachable, message);
}

/** fetch(path) as JSON (or the Response with raw: true); throws ApiError / ApiUnreachable. */
export async function api(path, options = {}) {
  try {
    return await call(path, options);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401 || !(await askForKey())) throw error;
    return call(path, options);
  }
}

async function call(path, { method = "GET", body, timeoutMs = TIMEOUT_MS, raw = false, signal } = {}) {
  const headers = {};
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new DOMException("timed out", "TimeoutError")), timeoutMs);
  if (signal) signal.addEventListener("abort", () => controller.abort(signal.reason));
  let response;
  try {
    response = await fetch(path, { method, body, headers, signal: controller.signal });
  } catch (error) {
    if (signal?.aborted) throw error;
    const why = error.name === "TimeoutError" || controller.signal.reason?.name === "TimeoutError"
      ? `no answer within ${Math.round(timeoutMs / 1000)} s` : "the connection failed";
    report(false, why);
    throw new ApiUnreachable(`The cavsync API cannot be reached (${why}).`);
  } finally {
    clearTimeout(timer);
  }
  report(true);
  if (!response.ok) {
    let detail = response.statusText || `HTTP ${response.status}`;
    try {
      detail = (await response.json()).detail || detail;
    } catch { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  return raw ? response : response.json();
}

/** A user-facing sentence for any error a call can throw. */
export function explain(error) {
  if (error instanceof ApiError) {
    const hint = { 401: " The API key is asked for again on the next try.", 403: "", 413: "", 415: "", 503: " Try again in a moment." };
    return `${error.message}${hint[error.status] ?? ""} (HTTP ${error.status})`;
  }
  return error.message || String(error);
}
