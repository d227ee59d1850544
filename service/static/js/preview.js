// The query's own content shown before and after searching: a waveform for sound, frames for pictures.
import { h, once } from "./util.js";

/** Decode audio (a Blob/File or a URL) and draw its waveform; `range` [start, end] s is highlighted. */
export async function drawWaveform(canvas, source, range = null) {
  const data = source instanceof Blob ? await source.arrayBuffer() : await (await fetch(source)).arrayBuffer();
  const context = new OfflineAudioContext(1, 1, 16000);
  const audio = await context.decodeAudioData(data);
  const samples = audio.getChannelData(0);
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  if (range) {
    const x0 = (range[0] / audio.duration) * width;
    const x1 = (Math.min(range[1], audio.duration) / audio.duration) * width;
    ctx.fillStyle = "rgba(255, 209, 102, 0.35)";
    ctx.fillRect(x0, 0, Math.max(2, x1 - x0), height);
  }
  ctx.fillStyle = "#1f4e79";
  const step = Math.max(1, Math.floor(samples.length / width));
  for (let x = 0; x < width; x++) {
    let lo = 1, hi = -1;
    for (let i = x * step; i < Math.min(samples.length, (x + 1) * step); i++) {
      lo = Math.min(lo, samples[i]);
      hi = Math.max(hi, samples[i]);
    }
    if (hi < lo) continue;
    ctx.fillRect(x, ((1 - hi) / 2) * height, 1, Math.max(1, ((hi - lo) / 2) * height));
  }
  return audio.duration;
}

/** `count` frames of a video (URL) between start and end s, as small canvases in `container`. */
export async function drawFrames(container, url, { count = 8, start = 0, end = null } = {}) {
  container.replaceChildren();
  const video = h("video", { muted: true, preload: "auto", src: url });
  video.muted = true;
  await once(video, "loadedmetadata");
  const last = Math.min(end ?? video.duration, video.duration);
  const first = Math.min(start, last);
  for (let i = 0; i < count; i++) {
    const at = first + ((i + 0.5) * (last - first)) / count;
    video.currentTime = at;
    await once(video, "seeked");
    const canvas = h("canvas", { width: 96, height: Math.round((96 * video.videoHeight) / video.videoWidth) || 54 });
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    container.append(h("figure", {}, canvas, h("figcaption", { text: `${at.toFixed(1)} s` })));
  }
  const duration = video.duration;
  video.removeAttribute("src");
  video.load();
  return duration;
}

/** Posters of an indexed video between start and end s (images served by the API). */
export function drawPosters(container, videoId, { count = 8, start = 0, end = 10.24 } = {}) {
  container.replaceChildren();
  for (let i = 0; i < count; i++) {
    const at = start + ((i + 0.5) * (end - start)) / count;
    container.append(h("figure", {},
      h("img", { src: `/videos/${videoId}/poster?time=${at.toFixed(2)}&width=96`, alt: `frame at ${at.toFixed(1)} s`, width: 96 }),
      h("figcaption", { text: `${at.toFixed(1)} s` })));
  }
}
