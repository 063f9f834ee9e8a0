// A generated clip in the page: drawn looping on a canvas, and downloaded as an animated PNG with its settings.
//
//   drawClip(canvas, result, {size})  <- the server's looping MP4 (core.media.mp4_bytes): every frame of a result
//                                        (studio.js's generate: {frames, numFrames, fps, width, height}) at its fps,
//                                        forever; returns stop().  An image (one frame) is drawn once.
//   clipPng(result, settings)         <- core.media.png_bytes / mp4_bytes's settings: an animated PNG (APNG) that
//                                        loops forever at the clip's fps, the settings as JSON in an "elt-studio"
//                                        text chunk (the key of the server's PNG); one frame: a plain PNG
//   clipDownload(result, settings)    -> a Blob of clipPng (image/apng or image/png) to hand to a link
//
// Why APNG: browsers play it in an <img> as they play a GIF, it keeps every colour (a GIF has 256), and it needs
// only deflate (CompressionStream, in browsers and Node), not a video encoder; MediaRecorder would record a WebM
// in real time, its frame timing at the mercy of a busy page, with no place for the settings.  tests/test_browser_clip.py reads the file
// back with Pillow.  No globals; Node imports it too (drawClip needs a canvas).

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const KEY = "elt-studio"; // core.media.png_bytes's text key

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function u32(...values) {
  const out = new Uint8Array(4 * values.length);
  values.forEach((v, i) => new DataView(out.buffer).setUint32(4 * i, v));
  return out;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function chunk(type, data) {
  const body = concat([new TextEncoder().encode(type), data]);
  return concat([u32(data.length), body, u32(crc32(body))]);
}

async function zlib(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate")); // RFC 1950, as PNG wants
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** One frame's RGBA as PNG scanlines: RGB rows, each after filter byte 0 (none). */
function scanlines(rgba, width, height) {
  const out = new Uint8Array(height * (1 + 3 * width));
  for (let y = 0, q = 0; y < height; y++) {
    out[q++] = 0;
    for (let x = 0, p = 4 * y * width; x < width; x++, p += 4) {
      out[q++] = rgba[p];
      out[q++] = rgba[p + 1];
      out[q++] = rgba[p + 2];
    }
  }
  return out;
}

function checkResult(result) {
  const frames = result?.frames ?? (result?.rgba ? [result.rgba] : null);
  const { width, height } = result ?? {};
  if (!frames?.length || !Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1
      || frames.some((f) => f.length !== width * height * 4)) {
    throw new Error("a clip is {width, height, frames: [RGBA of width×height per frame], fps} (generate's result)");
  }
  const fps = frames.length > 1 ? result.fps : null;
  if (frames.length > 1 && !(Number.isInteger(fps) && fps >= 1 && fps <= 60)) {
    throw new Error(`a clip's fps must be an integer in 1..60, got ${JSON.stringify(result.fps)}`);
  }
  return { frames, width, height, fps };
}

/** An animated PNG of a result's frames (a plain PNG for one frame) with `settings` in its "elt-studio" chunk. */
export async function clipPng(result, settings = null) {
  const { frames, width, height, fps } = checkResult(result);
  const header = new Uint8Array(13);
  new DataView(header.buffer).setUint32(0, width);
  new DataView(header.buffer).setUint32(4, height);
  header.set([8, 2, 0, 0, 0], 8); // 8 bits, RGB, deflate, adaptive filtering, no interlace
  const parts = [new Uint8Array(SIGNATURE), chunk("IHDR", header)];
  if (frames.length > 1) parts.push(chunk("acTL", u32(frames.length, 0))); // 0 plays: loop forever
  if (settings) { // iTXt: UTF-8 text (a class name need not be Latin-1), uncompressed, no language
    const text = new TextEncoder().encode(JSON.stringify(settings));
    parts.push(chunk("iTXt", concat([new TextEncoder().encode(KEY), new Uint8Array([0, 0, 0, 0, 0]), text])));
  }
  let sequence = 0;
  for (const [i, rgba] of frames.entries()) {
    const data = await zlib(scanlines(rgba, width, height));
    if (frames.length > 1) {
      const control = new Uint8Array(26); // fcTL: the whole canvas, shown 1/fps s, no disposal or blending
      const view = new DataView(control.buffer);
      view.setUint32(0, sequence++);
      view.setUint32(4, width);
      view.setUint32(8, height);
      view.setUint16(20, 1);
      view.setUint16(22, fps);
      parts.push(chunk("fcTL", control));
    }
    parts.push(i === 0 ? chunk("IDAT", data) : chunk("fdAT", concat([u32(sequence++), data])));
  }
  parts.push(chunk("IEND", new Uint8Array(0)));
  return concat(parts);
}

/** A Blob to download: the result as an animated PNG (a PNG for an image) carrying `settings`. */
export async function clipDownload(result, settings = null) {
  const bytes = await clipPng(result, settings);
  return new Blob([bytes], { type: checkResult(result).frames.length > 1 ? "image/apng" : "image/png" });
}

/** Draw a result's frames on `canvas` (scaled to `size` px wide, pixelated), looping at its fps like the server's
 *  MP4; returns stop().  Drawing another result on the same canvas stops the previous loop. */
export function drawClip(canvas, result, { size = null } = {}) {
  const { frames, width, height, fps } = checkResult(result);
  canvas._eltStopClip?.();
  const scale = (size ?? width) / width;
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  const tile = new OffscreenCanvas(width, height);
  const images = frames.map((rgba) => new ImageData(rgba, width, height));
  let frame = 0;
  const show = () => {
    tile.getContext("2d").putImageData(images[frame], 0, 0);
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(tile, 0, 0, canvas.width, canvas.height);
    canvas.dataset.frame = String(frame);
    frame = (frame + 1) % frames.length;
  };
  show();
  const timer = frames.length > 1 ? setInterval(show, 1000 / fps) : null;
  const stop = () => {
    clearInterval(timer);
    if (canvas._eltStopClip === stop) delete canvas._eltStopClip;
  };
  canvas._eltStopClip = stop;
  return stop;
}
