// The results: a card per video (poster at the matched moment, score as a number and a bar, the moments as
// mm:ss chips, the per-frame similarity strip over time), a page of them at a time; the player is created on
// demand and plays a moment with a few seconds of context; "more like this"; "where is the sound?".
import { api, explain } from "./api.js";
import { drawOverlay, legend, localize } from "./localize.js";
import { clock, colour, h, once, showError } from "./util.js";

const PAGE_SIZE = 10;
const CONTEXT_S = 2; // seconds of context before and after a moment
const FRAME_S = 0.64; // one frame per 0.64 s (a 10.24-s clip is 16 frames)
const $ = (id) => document.getElementById(id);
let current = null; // {answer, context, handlers}

/** The moments of a result (sorted by score, best first, as the API sends them): [{start, end, score, match, frames}]. */
export function momentsOf(result) {
  if (Array.isArray(result.moments)) {
    return result.moments.map((m) => ({ start: m.start, end: m.end, score: m.score ?? result.score, match: m.match ?? null, frames: m.frame_scores || [] }));
  }
  const m = result.moment;
  return [{ start: m.start, end: m.end, score: result.score, frames: result.frame_scores || [] }];
}

function scoreBar(score) {
  const percent = Math.round(Math.max(0, Math.min(1, score)) * 100);
  return h("div", { class: "score" },
    h("span", { class: "score-value", text: score.toFixed(3) }),
    h("div", { class: "bar", role: "meter", "aria-label": "score", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": score.toFixed(3) },
      h("span", { style: `width:${percent}%` })));
}

/** The per-frame similarity over the video's time: a bar per frame at its time, the moments outlined. */
function drawStrip(canvas, moments, duration) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.fillStyle = "#eef1f5";
  ctx.fillRect(0, 0, width, height);
  const x = (t) => (t / duration) * width;
  moments.forEach((moment, rank) => {
    ctx.globalAlpha = rank === 0 ? 1 : 0.55; // the best moment stands out
    ctx.fillStyle = "rgba(255, 209, 102, 0.45)";
    ctx.fillRect(x(moment.start), 0, Math.max(2, x(moment.end) - x(moment.start)), height);
    moment.frames.forEach((score, i) => {
      const t = moment.start + i * FRAME_S;
      const [r, g, b] = colour(score);
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      const barHeight = Math.max(2, Math.max(0, score) * (height - 2));
      ctx.fillRect(x(t), height - barHeight, Math.max(1, x(FRAME_S) - 1), barHeight);
    });
  });
  ctx.globalAlpha = 1;
  const best = moments[0];
  ctx.strokeStyle = "#1f4e79";
  ctx.lineWidth = 2;
  ctx.strokeRect(x(best.start) + 1, 1, Math.max(2, x(best.end) - x(best.start)) - 2, height - 2);
}

class Card {
  constructor(result, rank, context, handlers) {
    Object.assign(this, { result, rank, context, handlers });
    this.moments = momentsOf(result);
    this.duration = null;
    this.video = null;
    this.build();
    this.loadDetails();
  }

  build() {
    const r = this.result;
    const best = this.moments[0];
    const name = r.name;
    this.stage = h("div", { class: "stage" },
      h("img", { class: "poster", loading: "lazy", width: 320, alt: `${name} at ${clock(best.start)}`,
        src: `/videos/${r.video_id}/poster?time=${best.start.toFixed(2)}&width=320`,
        onerror: (event) => event.target.replaceWith(h("p", { class: "no-poster",
          text: "No picture: the file has no video track, or it is no longer on the server." })) }));
    this.chips = this.moments.map((m, i) => h("button", {
      type: "button", class: i === 0 ? "chip best" : "chip", "data-start": m.start, "data-end": m.end,
      "aria-label": `Play moment ${i + 1}: ${clock(m.start)} to ${clock(m.end)}, score ${m.score.toFixed(2)}`,
      title: m.match === null ? `score ${m.score.toFixed(3)}` : `score ${m.score.toFixed(3)}; match on the query's own modality ${m.match.toFixed(3)}`,
      onclick: () => this.play(m.start, m.end),
    }, `${clock(m.start)}–${clock(m.end)}`));
    this.strip = h("canvas", { class: "strip", width: 600, height: 36, tabindex: "0", role: "img",
      "aria-label": "Similarity of each frame over the video's time; click to play from there (Enter: the best moment)",
      onclick: (event) => this.stripClick(event),
      onkeydown: (event) => { if (event.key === "Enter") this.play(this.moments[0].start, this.moments[0].end); } });
    this.error = h("p", { class: "card-error", role: "alert", hidden: true });
    this.overlayControls = h("div", { class: "overlay-controls", hidden: true });
    this.node = h("li", { class: "card", "data-video-id": r.video_id },
      this.stage,
      h("div", { class: "card-body" },
        h("h3", {}, h("span", { class: "rank", text: `#${this.rank}` }), " ", name, " ", h("small", { text: `video ${r.video_id}` })),
        scoreBar(r.score),
        h("div", { class: "chips", role: "group", "aria-label": "Matched moments" }, this.chips),
        this.strip,
        h("div", { class: "card-actions" },
          h("button", { type: "button", class: "play", onclick: () => this.play(best.start, best.end) }, "▶ Play the moment"),
          h("button", { type: "button", class: "more", onclick: () => this.moreLikeThis() }, "More like this"),
          h("button", { type: "button", class: "where", onclick: () => this.whereIsTheSound() }, "Where is the sound?"),
          h("a", { href: `/videos/${r.video_id}/media`, download: name, class: "download" }, "Download")),
        this.overlayControls,
        this.error));
    drawStrip(this.strip, this.moments, Math.max(10.24, best.end));
  }

  async loadDetails() {
    try {
      const video = await api(`/videos/${this.result.video_id}`);
      this.duration = video.duration;
      if (this.duration) drawStrip(this.strip, this.moments, this.duration);
    } catch { /* the strip keeps its default scale */ }
  }

  fail(message) {
    showError(this.error, message);
  }

  /** The player, created on first use: the original file, starting at the moment with context around it. */
  player(start, end) {
    if (this.video) return this.video;
    const from = Math.max(0, start - CONTEXT_S);
    const url = `/videos/${this.result.video_id}/media#t=${from.toFixed(2)},${(end + CONTEXT_S).toFixed(2)}`;
    this.video = h("video", { controls: true, preload: "auto", src: url, "aria-label": `${this.result.name} player` });
    this.overlay = h("canvas", { class: "overlay", "aria-hidden": "true" });
    this.stage.replaceChildren(this.video, this.overlay);
    this.video.addEventListener("error", () => this.fail(
      `This browser cannot play ${this.result.name} (its format or codec). ` +
      "The scores and posters still work; use Download to open it in another player."));
    this.video.addEventListener("seeked", () => {
      this.video.dataset.seekedTo = this.video.currentTime.toFixed(3);
      if (this.overlayOn && this.video.paused) this.whereIsTheSound();
    });
    this.video.addEventListener("play", () => this.overlay.classList.add("faded"));
    this.video.addEventListener("timeupdate", () => {
      if (this.stopAt && this.video.currentTime >= this.stopAt) { this.video.pause(); this.stopAt = null; }
    });
    return this.video;
  }

  async play(start, end) {
    const video = this.player(start, end);
    this.fail("");
    if (video.readyState < 1 && !video.error) {
      await once(video, "loadedmetadata").catch(() => { /* video.error is set: checked next */ });
    }
    if (video.error) return; // the card says why
    this.stopAt = end + CONTEXT_S;
    video.currentTime = start;
    video.play().catch(() => { /* autoplay refused: the controls stay */ });
  }

  stripClick(event) {
    const box = this.strip.getBoundingClientRect();
    const scale = this.duration || Math.max(10.24, this.moments[0].end);
    const at = ((event.clientX - box.left) / box.width) * scale;
    this.play(at, Math.min(scale, at + 3));
  }

  moreLikeThis() {
    const best = this.moments[0];
    const long = best.end - best.start >= 1;
    this.handlers.moreLikeThis(this.result.video_id, long ? best.start : 0, long ? best.end : null);
  }

  async whereIsTheSound() {
    const best = this.moments[0];
    const video = this.player(best.start, best.end);
    if (video.readyState < 1) {
      await once(video, "loadedmetadata");
      video.currentTime = best.start;
      await once(video, "seeked");
    }
    video.pause();
    const time = video.currentTime;
    this.fail("");
    this.overlayControls.hidden = false;
    this.overlayControls.replaceChildren(h("span", { class: "hint", text: "Locating the sound…" }));
    try {
      const found = await localize(this.result.video_id, time, this.context.audio);
      this.overlayOn = true;
      const { lo, hi, method } = drawOverlay(this.overlay, video, found);
      this.overlay.classList.remove("faded");
      this.overlay.dataset.time = found.frame_time;
      const slider = h("input", { type: "range", min: "0", max: "100", value: "60", class: "opacity",
        oninput: (event) => { this.overlay.style.opacity = event.target.value / 100; } });
      this.overlay.style.opacity = 0.6;
      const whose = this.context.audio ? "your query's sound" : "the video's own sound";
      this.overlayControls.replaceChildren(
        h("label", {}, "Overlay opacity ", slider),
        legend(lo, hi, method),
        h("button", { type: "button", onclick: () => this.hideOverlay() }, "Hide"),
        h("p", { class: "hint", text: `Where ${whose} comes from in the frame at ${found.frame_time.toFixed(2)} s (bright: likely). Pause elsewhere to update.` }));
    } catch (problem) {
      this.overlayControls.hidden = true;
      this.fail(`Localization failed: ${explain(problem)}`);
    }
  }

  hideOverlay() {
    this.overlayOn = false;
    this.overlay.getContext("2d").clearRect(0, 0, this.overlay.width, this.overlay.height);
    this.overlayControls.hidden = true;
  }
}

function showPage(page) {
  const { answer, context, handlers } = current;
  const pages = Math.max(1, Math.ceil(answer.results.length / PAGE_SIZE));
  page = Math.min(Math.max(0, page), pages - 1);
  current.page = page;
  const slice = answer.results.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
  $("result-list").replaceChildren(...slice.map((r, i) => new Card(r, page * PAGE_SIZE + i + 1, context, handlers).node));
  $("results-page").textContent = `Page ${page + 1} of ${pages}`;
  $("results-prev").disabled = page === 0;
  $("results-next").disabled = page >= pages - 1;
}

export function renderResults(answer, context, handlers) {
  current = { answer, context, handlers, page: 0 };
  $("results").hidden = false;
  const q = answer.query;
  const what = q.source === "video" ? `video ${q.video_id}` : "your file";
  const t = answer.timings;
  $("results-summary").textContent = answer.results.length
    ? `${answer.results.length} videos ranked by ${answer.strategy.replace("_", " ")} similarity of ${what}'s ` +
      `${context.mode === "sound" ? "sound with their pictures" : "pictures with their sound"} ` +
      `(${q.frames} query frames${q.truncated ? ": only the query's beginning was used" : ""}; index ${answer.index_version}; ` +
      `${t.total_ms.toFixed(0)} ms on the server).`
    : "No video matched: the index is empty (index some media in Indexing jobs).";
  showPage(context.page || 0);
  $("results-title").focus({ preventScroll: true });
}

export function initResults() {
  $("results-prev").addEventListener("click", () => { showPage(current.page - 1); current.handlers.onPage(current.page); });
  $("results-next").addEventListener("click", () => { showPage(current.page + 1); current.handlers.onPage(current.page); });
}
