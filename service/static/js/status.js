// The banner: what /health says (model, index version, queue), and a clear message when the API is down.
import { api, onReachability } from "./api.js";

const POLL_MS = 15000;
const RETRY_MS = 4000;
let timer = null;
let down = false;

function banner() {
  return document.getElementById("banner");
}

function showDown(message) {
  const node = banner();
  node.className = "banner down";
  node.setAttribute("role", "alert");
  node.textContent = `The cavsync API at ${location.origin} cannot be reached (${message}). ` +
    "Is the server running (cavsync serve / make demo)? Retrying…";
}

function showHealth(health) {
  const node = banner();
  const index = health.index;
  const size = index.version ? `index ${index.version}: ${index.videos} videos, ${index.clips} clips` : "no index yet";
  const problems = [];
  if (health.database !== "ok") problems.push("the catalog database does not answer");
  if (health.queue === "unreachable") problems.push("the indexing queue is unreachable");
  node.className = problems.length ? "banner degraded" : "banner ok";
  node.setAttribute("role", "status");
  node.textContent = `${problems.length ? "Degraded: " + problems.join("; ") + ". " : ""}` +
    `Model ${health.model.preset} (${health.model.id.slice(0, 8)}, ${health.model.device}) · ${size} · ` +
    `queue ${health.queue}`;
}

export async function refreshHealth() {
  clearTimeout(timer);
  try {
    showHealth(await api("/health", { timeoutMs: 10000 }));
    timer = setTimeout(refreshHealth, POLL_MS);
  } catch {
    timer = setTimeout(refreshHealth, RETRY_MS); // the banner was set by the reachability listener
  }
}

export function startStatus() {
  onReachability((reachable, message) => {
    if (!reachable) {
      down = true;
      showDown(message);
      clearTimeout(timer);
      timer = setTimeout(refreshHealth, RETRY_MS);
    } else if (down) {
      down = false;
      refreshHealth();
    }
  });
  refreshHealth();
}
