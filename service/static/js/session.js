// The API key, asked for when the API answers 401 (CAVSYNC_API_ACCESS=all: every data route; or a write when a key
// is set). POST /session trades it for an HttpOnly, SameSite=Strict cookie that every later request carries
// (fetch, and the <img> posters and <video> media, which cannot send a header); the page never keeps the key.
// Calls that meet a 401 at the same time share one dialog.
let pending = null;

/** Resolves true once a session is open, false when the person cancels. */
export function askForKey() {
  pending ??= showDialog().finally(() => { pending = null; });
  return pending;
}

async function openSession(key) {
  if (!key) return "Enter the key.";
  let response;
  try {
    response = await fetch("/session", { method: "POST", headers: { "X-API-Key": key } });
  } catch {
    return "The API cannot be reached.";
  }
  if (response.ok) return null;
  let detail = response.statusText || "refused";
  try {
    detail = (await response.json()).detail || detail;
  } catch { /* not JSON */ }
  return `Not accepted: ${detail} (HTTP ${response.status})`;
}

function showDialog() {
  const dialog = document.getElementById("key-dialog");
  const form = dialog.querySelector("form");
  const input = document.getElementById("key-input");
  const error = document.getElementById("key-error");
  input.value = "";
  error.textContent = "";
  error.hidden = true;
  return new Promise((resolve) => {
    const finish = (opened) => {
      form.removeEventListener("submit", submit);
      dialog.removeEventListener("close", cancel);
      if (dialog.open) dialog.close();
      resolve(opened);
    };
    const cancel = () => finish(false); // the Cancel button or Escape
    async function submit(event) {
      event.preventDefault();
      const why = await openSession(input.value.trim());
      if (why === null) return finish(true);
      error.textContent = why;
      error.hidden = false;
      input.select();
    }
    form.addEventListener("submit", submit);
    dialog.addEventListener("close", cancel);
    document.getElementById("key-cancel").onclick = () => dialog.close();
    dialog.showModal();
    input.focus();
  });
}
