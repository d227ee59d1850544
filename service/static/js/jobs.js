// Indexing jobs: index paths under the media roots (shown) or uploads; the jobs with progress, how they ended
// (done, done with errors, failed: each its colour, the failed count) and each failed file's error (uploads named
// as they were sent), refreshed while any job is still running.
import { api, explain } from "./api.js";
import { writeState } from "./state.js";
import { announce, fileName, h, showError } from "./util.js";

const PAGE_SIZE = 10;
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);
let offset = 0;
let timer = null;

// How a job ended, as the page shows it: `done` with failed files is not a success (its own colour and words).
function outcome(job) {
  if (job.state === "done" && job.partial) return { key: "partial", text: "done with errors" };
  return { key: job.state, text: job.state };
}

// A failed file as its user knows it: an upload by the name it was sent with, a file given by path by its path.
function failureItem(file) {
  const name = file.uploaded ? file.name : file.path;
  const error = file.error || "";
  const prefix = [`${name}: `, `${fileName(name)}: `].find((p) => error.startsWith(p));
  return h("li", {},
    h("span", { class: "path", title: file.uploaded ? `uploaded as ${file.name}` : file.path, text: name }),
    ": ", h("span", { text: prefix ? error.slice(prefix.length) : error }));
}

function jobItem(job) {
  const settled = job.done + job.skipped + job.failed;
  const percent = job.total ? Math.round((100 * settled) / job.total) : 100;
  const failures = job.failures || [];
  const ended = outcome(job);
  return h("li", { class: `job job-${ended.key}`, "data-job-id": job.id },
    h("div", { class: "job-head" },
      h("span", { class: `status status-${ended.key}`, text: ended.text }),
      h("strong", { text: ` ${settled} of ${job.total} files` }),
      h("span", { class: "hint", text: ` · ${job.done} indexed · ${job.skipped} already indexed · ` }),
      h("strong", { class: job.failed ? "failed-count has-failed" : "failed-count", text: `${job.failed} failed` }),
      h("span", { class: "hint", text: ` · started ${new Date(job.created_at).toLocaleTimeString()} · job ${job.id.slice(0, 8)}` })),
    h("progress", { max: "100", value: String(percent), "aria-label": `job ${job.id.slice(0, 8)} progress` }),
    failures.length
      ? h("details", { open: true },
        h("summary", { text: `${failures.length} failed file${failures.length > 1 ? "s" : ""}` }),
        h("ul", { class: "file-errors" }, failures.map(failureItem)))
      : null);
}

export async function loadJobs() {
  clearTimeout(timer);
  try {
    const page = await api(`/jobs?limit=${PAGE_SIZE}&offset=${offset}`);
    $("job-list").replaceChildren(...page.items.map(jobItem));
    const last = Math.min(page.total, offset + page.items.length);
    $("jobs-page").textContent = page.total ? `${offset + 1}–${last} of ${page.total}` : "";
    $("jobs-summary").textContent = page.total ? "" : "No indexing job yet.";
    $("jobs-prev").disabled = offset === 0;
    $("jobs-next").disabled = last >= page.total;
    const active = page.items.some((job) => job.state === "queued" || job.state === "running");
    if (active && !$("view-jobs").hidden) timer = setTimeout(loadJobs, POLL_MS);
  } catch (error) {
    showError($("jobs-error"), `The jobs cannot be read: ${explain(error)}`);
  }
}

async function submit(body, what) {
  showError($("jobs-error"), "");
  try {
    const accepted = await api("/index", { method: "POST", body });
    announce(`Indexing job started: ${accepted.files} files`);
    $("jobs-summary").textContent = `Job ${accepted.job_id.slice(0, 8)} started: ${accepted.files} files (${accepted.mode}).`;
    offset = 0;
    await loadJobs();
    return true;
  } catch (error) {
    showError($("jobs-error"), `Could not index ${what}: ${explain(error)}`);
    return false;
  }
}

async function loadRoots() {
  try {
    const roots = await api("/index/roots");
    const list = roots.media_roots;
    $("media-roots").replaceChildren(...(list.length
      ? list.map((root, i) => h("code", { text: root + (i < list.length - 1 ? "  " : "") }))
      : [h("em", { text: "none configured (CAVSYNC_MEDIA_ROOTS): only uploads can be indexed" })]));
    if (list.length && !$("paths").value) $("paths").placeholder = `${list[0]}/…`;
  } catch { /* the banner says why */ }
}

export function applyJobsState(state) {
  offset = Math.max(0, Number(state.jobs || 0));
  loadRoots();
  loadJobs();
}

export function initJobs() {
  $("index-paths").addEventListener("submit", async (event) => {
    event.preventDefault();
    const paths = $("paths").value.split("\n").map((p) => p.trim()).filter(Boolean);
    if (!paths.length) return showError($("jobs-error"), "Give at least one absolute path under a media root.");
    if (await submit({ paths }, "these paths")) $("paths").value = "";
  });
  $("index-uploads").addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = [...$("upload-files").files];
    if (!files.length) return showError($("jobs-error"), "Choose one or more media files first.");
    const body = new FormData();
    for (const file of files) body.append("files", file, file.name);
    if (await submit(body, "the uploads")) $("upload-files").value = "";
  });
  $("jobs-prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); writeState({ jobs: offset || null }); loadJobs(); });
  $("jobs-next").addEventListener("click", () => { offset += PAGE_SIZE; writeState({ jobs: offset }); loadJobs(); });
}
