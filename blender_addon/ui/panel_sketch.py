"""Draw the sidebar panel's layout to a PNG without a Blender window (pip bpy has none).

Each panel's real ``draw()`` runs against a recording stand-in for ``UILayout``; the recorded
tree (rows, boxes, labels, properties with their current values, operator buttons) is then
painted with Pillow in Blender's dark theme. It shows what the panel contains and how it is
arranged, not Blender's exact pixels.

    python -m blender_addon.ui.panel_sketch docs/images/addon_panel.png
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image, ImageDraw, ImageFont

WIDTH = 420
ROW_H = 24
PAD = 8
COLOURS = {"bg": (48, 48, 48), "panel": (61, 61, 61), "header": (40, 40, 40), "text": (225, 225, 225),
           "field": (84, 84, 84), "button": (99, 99, 99), "on": (71, 114, 179), "box": (54, 54, 54),
           "dim": (160, 160, 160)}


@dataclass
class Item:
    kind: str  # label, prop, operator, row, column, box
    text: str = ""
    value: str = ""
    children: list[Item] = field(default_factory=list)
    options: list[tuple[str, bool]] = field(default_factory=list)  # expanded enum items


class Recorder:
    """Enough of ``bpy.types.UILayout`` for our panels' ``draw()``."""

    def __init__(self, item: Item) -> None:
        self.item = item

    def _child(self, kind: str) -> Recorder:
        child = Item(kind)
        self.item.children.append(child)
        return Recorder(child)

    def row(self, align: bool = False) -> Recorder:
        return self._child("row")

    def column(self, align: bool = False) -> Recorder:
        return self._child("column")

    def box(self) -> Recorder:
        return self._child("box")

    def label(self, text: str = "", icon: str = "NONE") -> None:
        self.item.children.append(Item("label", text))

    def progress(self, factor: float = 0.0, type: str = "BAR", text: str = "") -> None:
        self.item.children.append(Item("label", f"[{factor * 100:.0f} %] {text}"))

    def operator(self, idname: str, text: str | None = None, icon: str = "NONE") -> Any:
        if text is None:
            import bpy

            group, name = idname.split(".")
            text = getattr(getattr(bpy.ops, group), name).get_rna_type().name
        self.item.children.append(Item("operator", text or f"[{icon.lower()}]"))
        return SimpleNamespace()

    def prop(self, data: Any, name: str, text: str | None = None, icon: str = "NONE",
             expand: bool = False) -> None:
        rna = data.bl_rna.properties[name]
        value = getattr(data, name)
        label = rna.name if text is None else text
        if rna.type == "ENUM" and expand:
            options = [(e.name, e.identifier == value) for e in rna.enum_items]
            self.item.children.append(Item("enum", label, options=options))
            return
        if rna.type == "BOOLEAN":
            self.item.children.append(Item("bool", label, "on" if value else "off"))
            return
        if rna.type == "ENUM":
            value = rna.enum_items[value].name
        elif rna.type == "FLOAT":
            value = f"{value:.2f}"
        self.item.children.append(Item("prop", label, str(value) if value != "" else "..."))


def record_panels(context: Any) -> list[tuple[str, Item]]:
    from blender_addon.ui import panels

    recorded = []
    for cls in panels.classes:
        root = Item("column")
        cls.draw(SimpleNamespace(layout=Recorder(root)), context)
        recorded.append((cls.bl_label, root))
    return recorded


def _height(item: Item) -> int:
    if item.kind == "row":
        return max([_height(c) for c in item.children] or [ROW_H])
    if item.kind in ("column", "box"):
        inner = sum(_height(c) for c in item.children)
        return inner + (2 * PAD if item.kind == "box" else 0)
    return ROW_H


def _draw(draw: ImageDraw.ImageDraw, font: Any, item: Item, x: int, y: int, width: int) -> int:
    """Paint ``item`` at (x, y) within ``width``; returns the height used."""
    h = _height(item)
    if item.kind == "box":
        draw.rounded_rectangle((x, y + 2, x + width, y + h - 2), 4, fill=COLOURS["box"], outline=(70, 70, 70))
        cy = y + PAD
        for child in item.children:
            cy += _draw(draw, font, child, x + PAD, cy, width - 2 * PAD)
        return h
    if item.kind == "column":
        cy = y
        for child in item.children:
            cy += _draw(draw, font, child, x, cy, width)
        return h
    if item.kind == "row":
        n = max(1, len(item.children))
        cell = (width - (n - 1) * 2) / n
        for i, child in enumerate(item.children):
            _draw(draw, font, child, round(x + i * (cell + 2)), y, round(cell))
        return h
    box = (x, y + 2, x + width, y + ROW_H - 2)
    if item.kind == "label":
        draw.text((x + 2, y + 5), item.text[:70], font=font, fill=COLOURS["dim"])
    elif item.kind == "operator":
        draw.rounded_rectangle(box, 4, fill=COLOURS["button"])
        draw.text((x + width / 2, y + ROW_H / 2), item.text, font=font, fill=COLOURS["text"], anchor="mm")
    elif item.kind == "bool":
        draw.rounded_rectangle((x + 2, y + 6, x + 14, y + 18), 2, fill=COLOURS["on"] if item.value == "on"
                               else COLOURS["field"])
        draw.text((x + 20, y + 5), item.text, font=font, fill=COLOURS["text"])
    elif item.kind == "enum":
        n = len(item.options)
        cell = width / n
        for i, (name, active) in enumerate(item.options):
            draw.rectangle((x + i * cell, y + 2, x + (i + 1) * cell - 1, y + ROW_H - 2),
                           fill=COLOURS["on"] if active else COLOURS["field"])
            draw.text((x + (i + 0.5) * cell, y + ROW_H / 2), name[:16], font=font, fill=COLOURS["text"], anchor="mm")
    else:  # prop
        draw.rounded_rectangle(box, 4, fill=COLOURS["field"])
        draw.text((x + 6, y + 5), f"{item.text}:", font=font, fill=COLOURS["dim"])
        value = item.value if len(item.value) < 34 else "..." + item.value[-31:]
        draw.text((x + width - 6, y + ROW_H / 2), value, font=font, fill=COLOURS["text"], anchor="rm")
    return h


def render_sketch(recorded: list[tuple[str, Item]], path: Path) -> Path:
    font = ImageFont.load_default(size=12)
    total = sum(_height(root) + ROW_H + 3 * PAD for _, root in recorded) + PAD
    image = Image.new("RGB", (WIDTH, total), COLOURS["bg"])
    draw = ImageDraw.Draw(image)
    y = PAD
    for title, root in recorded:
        height = _height(root)
        draw.rectangle((4, y, WIDTH - 4, y + ROW_H + height + 2 * PAD), fill=COLOURS["panel"])
        draw.rectangle((4, y, WIDTH - 4, y + ROW_H), fill=COLOURS["header"])
        draw.text((14, y + 5), f"v  {title}", font=font, fill=COLOURS["text"])
        _draw(draw, font, root, 4 + PAD, y + ROW_H + PAD, WIDTH - 8 - 2 * PAD)
        y += ROW_H + height + 3 * PAD
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/images/addon_panel.png"))
    parser.add_argument("--scene", default="scenes/sample_office", help="scene folder shown as loaded")
    args = parser.parse_args(argv)
    import bpy

    import blender_addon

    blender_addon.register()
    try:
        settings = bpy.context.scene.fisheye_synth
        settings.scene_dir = settings.loaded_scene_dir = args.scene
        settings.batch_out = "out/dataset"
        settings.train_config = "configs/refiner_aggan.json"
        settings.model = "aggan32"
        # Status lines appear under their buttons only while or after something ran.
        print(render_sketch(record_panels(bpy.context), args.out))
    finally:
        blender_addon.unregister()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
