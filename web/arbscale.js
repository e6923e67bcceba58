// Shows, on ArbScale decode/upscale nodes, the output size that the current scale or
// width/height gives for the connected image, updated as the user edits; refusals (the same rule
// and words as the server's) in a warning colour. Keeps every ArbScale node wide enough for its
// title and tall enough for the label.
import { app } from "../../scripts/app.js";
import { imageBytes, outputSize } from "./size.js";

const SIZE_NODES = new Set(["ArbScaleImplicitDecode", "ArbScaleUpscale"]);
const FOLLOW_TYPES = new Set(["IMAGE", "ARBSCALE_LATENT"]);
const LABEL_FONT = "12px sans-serif";
const LABEL_LINE = 16; // px per label line
const COLOURS = { ok: "#8fd18f", info: "#b0b0b0", warn: "#f0c060", refused: "#ff6b5b" };
const BIG_IMAGE = 2e9; // bytes: above this the label says how much RAM the IMAGE takes

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

// The [width, height] of the image feeding `node`: a previewed image upstream (Load Image, or any
// node that has shown one), an Empty Latent's size, or the size seen at the last run.
function sourceSize(node, seen = new Set()) {
  if (!node || seen.has(node.id)) return null;
  seen.add(node.id);
  if (node.type === "ArbScaleEmptyLatent") return [widgetValue(node, "width"), widgetValue(node, "height")];
  const img = node.imgs?.[0];
  if (img?.naturalWidth) return [img.naturalWidth, img.naturalHeight];
  for (const input of node.inputs ?? []) {
    if (!FOLLOW_TYPES.has(input.type) || input.link == null) continue;
    const link = app.graph.links[input.link] ?? app.graph.links.get?.(input.link);
    const size = link && sourceSize(app.graph.getNodeById(link.origin_id), seen);
    if (size) return size;
  }
  return null;
}

// {text, kind}: kind is one of COLOURS' keys.
export function sizeLabel(node) {
  const source = sourceSize(node);
  if (!source) {
    return node.arbscaleLastSize
      ? { text: `output ${node.arbscaleLastSize} (last run)`, kind: "info" }
      : { text: "output: connect an image", kind: "info" };
  }
  const out = outputSize(source, widgetValue(node, "scale"), widgetValue(node, "width"), widgetValue(node, "height"));
  if (typeof out === "string") return { text: `refused: ${out}`, kind: "refused" };
  const text = `${source[0]}x${source[1]} → ${out[0]}x${out[1]}`;
  const bytes = imageBytes(out[0], out[1]);
  if (bytes > BIG_IMAGE) return { text: `${text} (IMAGE ${(bytes / 1e9).toFixed(1)} GB of RAM)`, kind: "warn" };
  return { text, kind: "ok" };
}

// Greedy word wrap of `text` to `width` px.
function wrap(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of text.split(" ")) {
    const next = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(next).width > width) {
      lines.push(line);
      line = word;
    } else {
      line = next;
    }
  }
  if (line) lines.push(line);
  return lines;
}

let measureCtx = null;
function titleWidth(node) {
  measureCtx ??= document.createElement("canvas").getContext("2d");
  const size = globalThis.LiteGraph?.NODE_TEXT_SIZE ?? 14;
  measureCtx.font = `${size}px Arial`;
  // title text + the collapse dot on its left and a margin on the right
  return measureCtx.measureText(node.title ?? "").width + 60;
}

app.registerExtension({
  name: "ArbScale.OutputSize",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("ArbScale")) return;
    const hasLabel = SIZE_NODES.has(nodeData.name);
    const computeSize = nodeType.prototype.computeSize;
    nodeType.prototype.computeSize = function () {
      const size = computeSize.apply(this, arguments);
      size[0] = Math.max(size[0], titleWidth(this));
      if (hasLabel) size[1] += LABEL_LINE + 6;
      return size;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      const min = this.computeSize();
      if (this.size[0] < min[0] || this.size[1] < min[1]) {
        this.setSize([Math.max(this.size[0], min[0]), Math.max(this.size[1], min[1])]);
      }
      return r;
    };
    if (!hasLabel) return;

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const r = onDrawForeground?.apply(this, arguments);
      if (this.flags?.collapsed) return r;
      const label = sizeLabel(this);
      this.arbscaleLabel = label.text; // read by tests
      this.arbscaleLabelKind = label.kind;
      ctx.save();
      ctx.font = LABEL_FONT;
      const lines = wrap(ctx, label.text, this.size[0] - 16);
      // a refusal can need more lines than the space kept for one: grow the node to show it all
      if (lines.length > 1) {
        const need = this.computeSize()[1] + (lines.length - 1) * LABEL_LINE;
        if (this.size[1] < need) this.setSize([this.size[0], need]);
      }
      ctx.fillStyle = COLOURS[label.kind];
      ctx.textAlign = "right";
      lines.forEach((line, i) => {
        ctx.fillText(line, this.size[0] - 8, this.size[1] - 6 - (lines.length - 1 - i) * LABEL_LINE);
      });
      ctx.restore();
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      if (output?.arbscale_size?.[0]) this.arbscaleLastSize = output.arbscale_size[0];
      this.setDirtyCanvas(true, false);
    };
    const onWidgetChanged = nodeType.prototype.onWidgetChanged;
    nodeType.prototype.onWidgetChanged = function () {
      onWidgetChanged?.apply(this, arguments);
      this.setDirtyCanvas(true, false);
    };
  },
});
