// Output size of the ArbScale decode/upscale nodes; mirrors nodes/logic.py target_size and
// arbscale_core/pipeline.py size_problem, word for word (tests/test_web.py checks both agree).
export const MAX_OUTPUT_PIXELS = 2 ** 31;

function scaledSide(side, scale) {
  return Math.max(1, Math.floor(side * scale + 0.5));
}

// Why an output of width x height is refused, or null.
export function sizeProblem(width, height) {
  if (width < 1 || height < 1) return `output size must be positive, got ${width}x${height}`;
  if (width * height > MAX_OUTPUT_PIXELS) {
    const fmt = (n) => n.toLocaleString("en-US");
    return `output ${width}x${height} is too large: ${fmt(width * height)} pixels, over the limit of ${fmt(MAX_OUTPUT_PIXELS)}`;
  }
  return null;
}

// source: [width, height] of the input image; returns [width, height] or an error string.
export function outputSize(source, scale, width, height) {
  const [sw, sh] = source;
  let w, h;
  if (width > 0 && height > 0) {
    [w, h] = [width, height];
  } else if (width > 0) {
    [w, h] = [width, Math.max(1, Math.floor((width * sh) / sw + 0.5))];
  } else if (height > 0) {
    [w, h] = [Math.max(1, Math.floor((height * sw) / sh + 0.5)), height];
  } else {
    if (!Number.isFinite(scale) || scale <= 0) return `scale must be a finite number > 0, got ${scale}`;
    [w, h] = [scaledSide(sw, scale), scaledSide(sh, scale)];
  }
  return sizeProblem(w, h) ?? [w, h];
}

// Bytes of the float32 IMAGE [1,h,w,3] that ComfyUI would hold for this output.
export function imageBytes(w, h) {
  return w * h * 3 * 4;
}
