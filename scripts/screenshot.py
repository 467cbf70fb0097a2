"""Renders a `tmux capture-pane -e -p` dump (text with ANSI colours) to a PNG.

usage: screenshot.py CAPTURE.txt OUT.png COLUMNS ROWS
"""
import sys

import pyte
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE = 15

NAMED = {
    "black": (0, 0, 0), "red": (205, 49, 49), "green": (13, 188, 121), "brown": (229, 229, 16),
    "yellow": (229, 229, 16), "blue": (36, 114, 200), "magenta": (188, 63, 188),
    "cyan": (17, 168, 205), "white": (229, 229, 229), "brightblack": (102, 102, 102),
    "brightred": (241, 76, 76), "brightgreen": (35, 209, 139), "brightyellow": (245, 245, 67),
    "brightblue": (59, 142, 234), "brightmagenta": (214, 112, 214), "brightcyan": (41, 184, 219),
    "brightwhite": (255, 255, 255),
}
BACKGROUND = (24, 24, 32)
FOREGROUND = (220, 220, 220)


def colour(value, default):
    if value == "default":
        return default
    if value in NAMED:
        return NAMED[value]
    if isinstance(value, str) and len(value) == 6:
        return tuple(int(value[i:i + 2], 16) for i in (0, 2, 4))
    return default


def main():
    capture, out, columns, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    screen = pyte.Screen(columns, rows)
    stream = pyte.Stream(screen)
    with open(capture, encoding="utf-8", errors="replace") as f:
        stream.feed(f.read().replace("\n", "\r\n"))
    font, bold = ImageFont.truetype(FONT, SIZE), ImageFont.truetype(BOLD, SIZE)
    left, top, right, bottom = font.getbbox("█")
    cell_w, cell_h = font.getlength("M"), SIZE + 4
    image = Image.new("RGB", (int(cell_w * columns) + 20, cell_h * rows + 20), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for y in range(rows):
        line = screen.buffer[y]
        for x in range(columns):
            char = line[x]
            fg, bg = colour(char.fg, FOREGROUND), colour(char.bg, BACKGROUND)
            if char.reverse:
                fg, bg = bg, fg
            px, py = 10 + x * cell_w, 10 + y * cell_h
            if bg != BACKGROUND:
                draw.rectangle([px, py, px + cell_w, py + cell_h], fill=bg)
            if char.data.strip():
                code = ord(char.data[0]) - 0x2800
                if 0 <= code < 256:
                    # Braille (the charts): two columns of four dots, drawn as small squares.
                    dots = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (1, 3)]
                    for bit, (dx, dy) in enumerate(dots):
                        if code & (1 << bit):
                            x0 = px + 1 + dx * cell_w / 2
                            y0 = py + 1 + dy * cell_h / 4
                            draw.rectangle([x0, y0, x0 + cell_w / 2 - 2, y0 + cell_h / 4 - 2], fill=fg)
                elif char.data in "█▒░▣":
                    shade = {"█": 1.0, "▣": 1.0, "▒": 0.6, "░": 0.3}[char.data]
                    fill = tuple(int(c * shade + b * (1 - shade)) for c, b in zip(fg, bg))
                    draw.rectangle([px, py + 1, px + cell_w - 1, py + cell_h - 2], fill=fill)
                else:
                    draw.text((px, py + 1), char.data, font=bold if char.bold else font, fill=fg)
    image.save(out)


if __name__ == "__main__":
    main()
