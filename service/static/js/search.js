// The search form: by sound (a file dropped, picked or pasted; a microphone recording; part of an indexed video)
// or by video (a file, or an indexed video), top-k and strategy; the query's waveform or frames; the results.
import { api, explain } from "./api.js";
import { Recorder } from "./recorder.js";
import { drawFrames, drawPosters, drawWaveform } from "./preview.js";
import { renderResults } from "./results.js";
import { readState, writeState } from "./state.js";
import { announce, clock, showError } from "./util.js";

const $ = (id) => document.getElementById(id);
const query = { upload: null, name: "", duration: null }; // the file or recording to send
let recorder = null;

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function source() {
  return document.querySelector("input[name=source]:checked").value;
}

function setRadio(name, value) {
  const input = document.querySelector(`input[name=${name}][value="${value}"]`);
  if (input) input.checked = true;
}

/** Show the parts of the form that fit the chosen mode and source. */
function syncForm() {
  const m = mode();
  if (m === "video" && source() === "mic") setRadio("source", "file");
  for (const node of document.querySelectorAll("#search-form [data-only]")) node.hidden = node.dataset.only !== m;
  for (const node of document.querySelectorAll("#search-form .source")) node.hidden = node.dataset.source !== source();
  $("file-input").accept = m === "sound" ? "audio/*,video/*" : "video/*";
}

async function preview() {
  const figure = $("query-preview");
  const waveform = $("waveform");
  const frames = $("frames");
  const caption = $("query-caption");
  figure.hidden = true;
  waveform.hidden = frames.hidden = true;
  try {
    if (source() === "video") {
      const id = Number($("video-id").value);
      if (!id) return;
      const start = Number($("range-start").value || 0);
      const endText = $("range-end").value;
      const end = endText ? Number(endText) : Infinity;
      figure.hidden = false;
      if (mode() === "sound") {
        waveform.hidden = false;
        const duration = await drawWaveform(waveform, `/videos/${id}/media`, [start, end]);
        caption.textContent = `Sound of video ${id}, ${start.toFixed(1)}–${Math.min(end, duration).toFixed(1)} s (highlighted) of ${duration.toFixed(1)} s`;
      } else {
        frames.hidden = false;
        const video = await api(`/videos/${id}`);
        const last = Math.min(end, video.duration || start + 10.24);
        drawPosters(frames, id, { start, end: last });
        caption.textContent = `Pictures of video ${id}, ${start.toFixed(1)}–${last.toFixed(1)} s`;
      }
    } else if (query.upload) {
      figure.hidden = false;
      const isVideo = (query.upload.type || "").startsWith("video/");
      if (mode() === "sound") {
        waveform.hidden = false;
        const duration = await drawWaveform(waveform, query.upload);
        query.duration = duration;
        caption.textContent = `${query.name}: ${duration.toFixed(1)} s of sound`;
      } else if (isVideo || query.upload instanceof File) {
        frames.hidden = false;
        const url = URL.createObjectURL(query.upload);
        const duration = await drawFrames(frames, url);
        URL.revokeObjectURL(url);
        caption.textContent = `${query.name}: ${duration.toFixed(1)} s of pictures`;
      }
    }
  } catch (error) {
    caption.textContent = `This browser cannot show a preview of the query (${error.message}); the server may still read it.`;
  }
}

function useFile(file, name) {
  query.upload = file;
  query.duration = null;
  query.name = name || file.name || "upload";
  $("file-name").textContent = `${query.name} (${(file.size / 1024).toFixed(0)} KiB)`;
  announce(`Query file: ${query.name}`);
  preview();
}

function wireFileInputs() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => event.target.files[0] && useFile(event.target.files[0]));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer?.files?.[0];
    if (file) useFile(file);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file-input").click(); }
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])][0];
    if (file && !document.getElementById("view-search").hidden) {
      setRadio("source", "file");
      syncForm();
      useFile(file);
    }
  });
}

function wireRecorder() {
  recorder = new Recorder({
    onLevel: (level) => { $("level").value = level; },
    onTick: (seconds) => { $("timer").textContent = clock(seconds); },
    onStop: ({ blob, seconds }) => {
      const extension = blob.type.includes("ogg") ? "ogg" : blob.type.includes("mp4") ? "m4a" : "webm";
      $("record").disabled = false;
      $("record").textContent = "● Re-record";
      $("stop").disabled = true;
      const audio = $("recording");
      audio.hidden = false;
      audio.src = URL.createObjectURL(blob);
      const short = seconds < 1 ? " It is under 1 s: record a little longer." : "";
      $("rec-state").textContent = `Recorded ${seconds.toFixed(1)} s.${short}`;
      useFile(blob, `microphone ${new Date().toTimeString().slice(0, 8)}.${extension}`);
    },
  });
  $("record").addEventListener("click", async () => {
    try {
      await recorder.start();
      $("record").disabled = true;
      $("stop").disabled = false;
      $("stop").focus();
      $("rec-state").textContent = "Recording… press Stop when done.";
    } catch (error) {
      $("rec-state").textContent = `The microphone cannot be used: ${error.message}. Allow it in the browser, or pick a file.`;
    }
  });
  $("stop").addEventListener("click", () => recorder.stop());
}

function formState() {
  const state = {
    view: "search", mode: mode(), source: source(), k: $("top-k").value, strategy: $("strategy").value,
    video: null, start: null, end: null, page: null,
  };
  if (source() === "video") {
    Object.assign(state, { video: $("video-id").value, start: $("range-start").value || null, end: $("range-end").value || null });
  }
  return state;
}

function request() {
  const body = new FormData();
  body.append("top_k", $("top-k").value || "20");
  body.append("strategy", $("strategy").value);
  if (source() === "video") {
    const id = $("video-id").value;
    if (!id) throw new Error("Give the id of an indexed video (see the Catalog), or pick another query.");
    body.append("video_id", id);
    if (Number($("range-start").value)) body.append("start", $("range-start").value);
    if ($("range-end").value) body.append("end", $("range-end").value);
  } else {
    if (!query.upload) throw new Error(source() === "mic" ? "Record something first." : "Drop, paste or choose a file first.");
    body.append("file", query.upload, query.name);
  }
  return body;
}

export async function runSearch({ push = true, page = 0 } = {}) {
  const error = $("search-error");
  showError(error, "");
  let body;
  try {
    body = request();
  } catch (problem) {
    showError(error, problem.message);
    return;
  }
  if (push) writeState(formState());
  const endpoint = mode() === "sound" ? "/search/audio-to-video" : "/search/video-to-audio";
  const button = $("search-button");
  button.disabled = true;
  $("search-state").textContent = "Searching…";
  const began = performance.now();
  try {
    const answer = await api(endpoint, { method: "POST", body });
    $("search-state").textContent = `${answer.results.length} videos in ${((performance.now() - began) / 1000).toFixed(1)} s`;
    const context = {
      mode: mode(),
      audio: mode() === "sound" && source() !== "video"
        ? { blob: query.upload, name: query.name, time: Math.min((query.duration || 2) / 2, 5.12) } : null,
      queryVideo: source() === "video" ? Number($("video-id").value) : null,
      page,
    };
    renderResults(answer, context, { moreLikeThis, onPage: (p) => writeState({ page: p || null }) });
    announce(`${answer.results.length} results`);
  } catch (problem) {
    $("search-state").textContent = "";
    showError(error, `The search failed: ${explain(problem)}`);
  } finally {
    button.disabled = false;
  }
}

/** Search again with part of a hit as the query (the same direction). */
export function moreLikeThis(videoId, start, end) {
  setRadio("source", "video");
  $("video-id").value = videoId;
  $("range-start").value = start ? start.toFixed(2) : "0";
  $("range-end").value = end ? end.toFixed(2) : "";
  syncForm();
  preview();
  runSearch();
  $("search-title").scrollIntoView?.({ block: "start" });
}

/** Fill the form from the URL; run the search when the URL says everything it needs (an indexed video). */
export function applySearchState(state) {
  setRadio("mode", state.mode === "video" ? "video" : "sound");
  setRadio("source", ["file", "mic", "video"].includes(state.source) ? state.source : "file");
  if (state.k) $("top-k").value = state.k;
  if (state.strategy) $("strategy").value = state.strategy;
  if (state.video) {
    $("video-id").value = state.video;
    $("range-start").value = state.start || "0";
    $("range-end").value = state.end || "";
  }
  syncForm();
  if (state.source === "video" && state.video) {
    preview();
    runSearch({ push: false, page: Number(state.page || 0) });
  } else if (state.source && state.source !== "video" && !query.upload && state.mode) {
    $("search-state").textContent = "This link was made with a file or a recording: give it again to search.";
  }
}

export function initSearch() {
  for (const input of document.querySelectorAll("input[name=mode], input[name=source]")) {
    input.addEventListener("change", () => { syncForm(); preview(); });
  }
  let typing = null;
  for (const id of ["video-id", "range-start", "range-end"]) {
    $(id).addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(preview, 500); });
  }
  $("search-form").addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
  wireFileInputs();
  wireRecorder();
  syncForm();
  applySearchState(readState());
}
