// Shows, on ArbScale decode/upscale nodes, the output size that the current scale or
// width/height gives for the connected image; updated as the user edits.
import { app } from "../../scripts/app.js";
import { outputSize } from "./size.js";

const SIZE_NODES = new Set(["ArbScaleImplicitDecode", "ArbScaleUpscale"]);
const FOLLOW_TYPES = new Set(["IMAGE", "ARBSCALE_LATENT"]);

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

export function sizeLabel(node) {
  const source = sourceSize(node);
  if (!source) return node.arbscaleLastSize ? `output ${node.arbscaleLastSize} (last run)` : "output: connect an image";
  const out = outputSize(source, widgetValue(node, "scale"), widgetValue(node, "width"), widgetValue(node, "height"));
  if (typeof out === "string") return `output: ${out}`;
  return `${source[0]}x${source[1]} → ${out[0]}x${out[1]}`;
}

app.registerExtension({
  name: "ArbScale.OutputSize",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SIZE_NODES.has(nodeData.name)) return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const r = onDrawForeground?.apply(this, arguments);
      if (this.flags?.collapsed) return r;
      const label = sizeLabel(this);
      this.arbscaleLabel = label;  // read by tests and the title tooltip
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#8fd18f";
      ctx.textAlign = "right";
      ctx.fillText(label, this.size[0] - 8, this.size[1] - 6);
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
