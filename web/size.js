// Output size of the ArbScale decode/upscale nodes; mirrors nodes/logic.py target_size
// (tests/test_web.py checks that both agree).
export const MAX_SIDE = 65536;

function scaledSide(side, scale) {
  return Math.max(1, Math.floor(side * scale + 0.5));
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
    if (!Number.isFinite(scale) || scale <= 0) return "scale must be > 0";
    [w, h] = [scaledSide(sw, scale), scaledSide(sh, scale)];
  }
  if (w > MAX_SIDE || h > MAX_SIDE) return `${w}x${h} is too large`;
  return [w, h];
}
