// The catalog: a page of videos (status, duration, modalities), one video's details, delete with a confirmation.
import { api, explain } from "./api.js";
import { writeState } from "./state.js";
import { announce, clock, h } from "./util.js";

const PAGE_SIZE = 20;
const $ = (id) => document.getElementById(id);
let offset = 0;
let total = 0;

function confirmDelete(video) {
  const dialog = $("confirm");
  $("confirm-title").textContent = `Delete video ${video.id}?`;
  $("confirm-text").textContent = `${video.name} leaves the search index at once and is marked deleted in the catalog. ` +
    "Files of the media folders stay where they are (the copy the server keeps of an uploaded file is deleted).";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

async function remove(video) {
  if (!(await confirmDelete(video))) return;
  try {
    await api(`/videos/${video.id}`, { method: "DELETE" });
    announce(`Video ${video.id} deleted`);
    $("catalog-summary").textContent = `Video ${video.id} (${video.name}) deleted.`;
    await loadCatalog();
    await showDetail(video.id);
  } catch (error) {
    $("catalog-summary").textContent = `Could not delete video ${video.id}: ${explain(error)}`;
  }
}

async function showDetail(id) {
  const panel = $("video-detail");
  panel.hidden = false;
  try {
    const video = await api(`/videos/${id}`);
    const live = video.status !== "deleted";
    panel.replaceChildren(
      h("h3", { text: `Video ${video.id}: ${video.name}` }),
      live && video.modalities.includes("visual")
        ? h("img", { src: `/videos/${video.id}/poster?width=320`, alt: `first frame of ${video.name}`, width: 320 }) : null,
      h("dl", {},
        h("dt", { text: "File" }), h("dd", { class: "path", text: video.uri }),
        h("dt", { text: "Status" }), h("dd", { text: video.status + (video.error ? `: ${video.error}` : "") }),
        h("dt", { text: "Duration" }), h("dd", { text: video.duration ? `${clock(video.duration)} (${video.duration.toFixed(2)} s)` : "unknown" }),
        h("dt", { text: "Modalities" }), h("dd", { text: video.modalities || "none" }),
        h("dt", { text: "Clips" }), h("dd", { text: `${video.clips.length} (${video.clips.map((c) => clock(c.start)).join(", ")})` }),
        h("dt", { text: "Indexed" }), h("dd", { text: new Date(video.updated_at).toLocaleString() })),
      h("div", { class: "card-actions" },
        live && video.status === "indexed"
          ? h("a", { href: `?view=search&mode=sound&source=video&video=${video.id}`, class: "button" }, "Search with its sound") : null,
        live && video.status === "indexed"
          ? h("a", { href: `?view=search&mode=video&source=video&video=${video.id}`, class: "button" }, "Search with its pictures") : null,
        live ? h("button", { type: "button", class: "danger", onclick: () => remove(video) }, "Delete…") : null));
  } catch (error) {
    panel.replaceChildren(h("p", { class: "error", text: explain(error) }));
  }
}

export async function loadCatalog() {
  const status = $("catalog-status").value;
  const params = new URLSearchParams({ limit: PAGE_SIZE, offset });
  if (status) params.set("status", status);
  try {
    const page = await api(`/videos?${params}`);
    total = page.total;
    $("catalog-rows").replaceChildren(...page.items.map((v) => h("tr", { "data-id": v.id },
      h("td", { text: v.id }),
      h("td", {}, h("button", { type: "button", class: "link-button", onclick: () => showDetail(v.id) }, v.name)),
      h("td", {}, h("span", { class: `status status-${v.status}`, text: v.status })),
      h("td", { text: v.duration ? clock(v.duration) : "–" }),
      h("td", { text: v.modalities || "–" }))));
    const last = Math.min(total, offset + page.items.length);
    $("catalog-page").textContent = total ? `${offset + 1}–${last} of ${total}` : "no videos";
    $("catalog-prev").disabled = offset === 0;
    $("catalog-next").disabled = last >= total;
  } catch (error) {
    $("catalog-summary").textContent = `The catalog cannot be read: ${explain(error)}`;
  }
}

export function applyCatalogState(state) {
  offset = Math.max(0, Number(state.offset || 0));
  $("catalog-status").value = state.status || "";
  loadCatalog();
}

export function initCatalog() {
  $("catalog-prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); writeState({ offset }); loadCatalog(); });
  $("catalog-next").addEventListener("click", () => { offset += PAGE_SIZE; writeState({ offset }); loadCatalog(); });
  $("catalog-status").addEventListener("change", () => {
    offset = 0;
    writeState({ status: $("catalog-status").value, offset: null });
    loadCatalog();
  });
}
