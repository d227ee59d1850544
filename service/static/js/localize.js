// "Where is the sound?": the /localize map of the frame on screen, drawn over the video where the picture is
// (also when the player letterboxes it), with an opacity slider and a colour legend.
import { api } from "./api.js";
import { colour, h } from "./util.js";

/** Where the picture is inside a <video> element (object-fit: contain), in CSS pixels. */
export function pictureRect(video) {
  const cw = video.clientWidth;
  const ch = video.clientHeight;
  const scale = Math.min(cw / video.videoWidth, ch / video.videoHeight);
  const width = video.videoWidth * scale;
  const height = video.videoHeight * scale;
  return { x: (cw - width) / 2, y: (ch - height) / 2, width, height };
}

/** The map's values, its size, its value range, and the part of the source picture it covers (0..1). */
function mapGeometry(found, video) {
  const rows = found.map.length;
  const cols = found.map[0].length;
  let lo = Infinity, hi = -Infinity;
  for (const row of found.map) for (const v of row) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (found.value_range) ({ min: lo, max: hi } = found.value_range);
  if (found.map_width) return { rows, cols, lo, hi, area: { x: 0, y: 0, width: 1, height: 1 } }; // the whole picture
  // An older answer: the map covers the model's centre square crop of the picture.
  const side = Math.min(video.videoWidth, video.videoHeight);
  const width = side / video.videoWidth;
  const height = side / video.videoHeight;
  return { rows, cols, lo, hi, area: { x: (1 - width) / 2, y: (1 - height) / 2, width, height } };
}

/** Draw the map over the picture: `canvas` covers the video element exactly. Returns the drawn rectangle. */
export function drawOverlay(canvas, video, found) {
  const { rows, cols, lo, hi, area } = mapGeometry(found, video);
  const span = hi - lo || 1;
  const image = new ImageData(cols, rows);
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < cols; x++) {
      const [r, g, b] = colour((found.map[y][x] - lo) / span);
      image.data.set([r, g, b, 255], (y * cols + x) * 4);
    }
  }
  const source = h("canvas", { width: cols, height: rows });
  source.getContext("2d").putImageData(image, 0, 0);
  canvas.width = video.clientWidth;
  canvas.height = video.clientHeight;
  const picture = pictureRect(video);
  const rect = {
    x: picture.x + area.x * picture.width,
    y: picture.y + area.y * picture.height,
    width: area.width * picture.width,
    height: area.height * picture.height,
  };
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(source, rect.x, rect.y, rect.width, rect.height);
  canvas.dataset.rect = JSON.stringify(rect);
  return { rect, lo, hi, method: found.method || "paper" };
}

/** A colour legend: the gradient with the smallest and largest values. */
export function legend(lo, hi, method) {
  const what = method === "head" ? "localization head score" : "audio–patch cosine";
  const bar = h("canvas", { width: 160, height: 10, class: "legend-bar", "aria-hidden": "true" });
  const ctx = bar.getContext("2d");
  for (let x = 0; x < bar.width; x++) {
    const [r, g, b] = colour(x / (bar.width - 1));
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(x, 0, 1, bar.height);
  }
  return h("div", { class: "legend", role: "img", "aria-label": `colour scale from ${lo.toFixed(2)} (low) to ${hi.toFixed(2)} (high)` },
    h("span", { text: lo.toFixed(2) }), bar, h("span", { text: hi.toFixed(2) }), h("small", { text: ` ${what}` }));
}

/** Ask /localize for the frame at `time` of video `videoId`, with the query's sound (an upload) or the video's own. */
export async function localize(videoId, time, audio) {
  const body = new FormData();
  body.append("video_id", videoId);
  body.append("time", time.toFixed(3));
  if (audio?.blob) {
    body.append("audio", audio.blob, audio.name);
    body.append("audio_time", String(audio.time ?? 0));
  } else {
    body.append("audio_video_id", videoId);
    body.append("audio_time", time.toFixed(3));
  }
  return api("/localize", { method: "POST", body });
}
