// The page's state lives in the URL (?view=search&mode=sound&source=video&video=4&start=2&end=5&k=20...), so a
// search can be shared and reloaded; the back button steps through it.
const KEYS = ["view", "mode", "source", "video", "start", "end", "k", "strategy", "page", "offset", "status", "jobs"];

export function readState() {
  const params = new URLSearchParams(location.search);
  const state = {};
  for (const key of KEYS) if (params.has(key)) state[key] = params.get(key);
  return state;
}

/** Merge `changes` into the URL's state (null removes a key); push a history entry unless `replace`. */
export function writeState(changes, { replace = false } = {}) {
  const params = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === undefined || value === "") params.delete(key);
    else params.set(key, String(value));
  }
  const url = `${location.pathname}?${params}`;
  if (url === `${location.pathname}${location.search}`) return;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}
