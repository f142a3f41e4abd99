"""``videoiq data inspect``: what a database holds (meta, counts, videos that decoded short, class histogram, the
shards of a sharded split and whether each is here and whole) and a contact sheet of clips."""
from __future__ import annotations

from collections import Counter

from .codec import DecodeCheck, decode_jpeg
from .records import DatabaseError
from .sampling import eval_indices
from .shards import ShardedSplit, VideoSet


def describe(db: VideoSet, top: int = 10) -> str:
    """A readable summary of a database: meta, frame statistics and the class histogram."""
    m = db.meta
    fpv = m["frames_per_video"]
    size = "x".join(str(v) for v in reversed(m["frame_size"])) if m["frame_size"] else f"short side {m['short_side']}"
    lines = [
        f"database     {db.path}",
        f"format       {m['format']} v{m['version']} (written by videoiq {m['videoiq_version']} on {m['created']})",
        f"dataset      {m['dataset']}  split {m['split'] or '-'}  from {m['build']['kind']}",
        f"videos       {m['num_videos']}  ({m['skipped']} inputs skipped at conversion)",
        f"frames       {m['num_frames']}  per video min {fpv['min']} / mean {fpv['mean']:.1f} / max {fpv['max']}",
        f"frame size   {size}",
        f"classes      {m['num_classes']}{'  (multi-label)' if m['multilabel'] else ''}",
    ]
    loss = m.get("decode_loss")  # absent in databases written before decoding was checked
    if loss is not None:
        short = loss["short"]
        lines.append(f"decoded short {len(short)} videos lost more than {loss['max_loss']:.0%} of their frames"
                     + (":" if short else ""))
        for key, figures in list(short.items())[:top]:
            lines.append(f"  {key}: {DecodeCheck.from_dict(figures).describe()}")
        if len(short) > top:
            lines.append(f"  ... and {len(short) - top} more (all in __meta__['decode_loss'])")
    if isinstance(db, ShardedSplit):
        lines.extend(_shard_lines(db, top))
    counts = Counter(x for labels in db.index.labels for x in labels)
    names = db.classes
    per_class = [(counts.get(c, 0), c) for c in range(len(names))]
    empty = [names[c] for n, c in per_class if n == 0]
    lines.append(f"videos/class min {min(per_class)[0]} / max {max(per_class)[0]}"
                 + (f"; {len(empty)} classes have none (e.g. {empty[0]})" if empty else ""))
    width = max(len(n) for n in names)
    most = max(n for n, _ in per_class) or 1
    shown = sorted(per_class, key=lambda p: (-p[0], p[1]))[:top]
    lines.append(f"top {len(shown)} classes:")
    for n, c in shown:
        lines.append(f"  {c:>4} {names[c]:<{width}} {n:>6} {'#' * max(1, round(30 * n / most)) if n else ''}")
    return "\n".join(lines)


def contact_sheet(db: VideoSet, path: str, clips: int = 4, frames: int = 8, tile: int = 96) -> list[str]:
    """Write a PNG with one row per clip (one video from each of the first ``clips`` classes found) and
    ``frames`` evenly spaced frames per row; returns the keys shown."""
    from PIL import Image, ImageDraw

    chosen, seen = [], set()
    for i, labels in enumerate(db.index.labels):
        if not labels or labels[0] not in seen:
            chosen.append(i)
            seen.update(labels)
        if len(chosen) == clips:
            break
    label_w = 8 * max(len(_row_title(db, i)) for i in chosen) + 8
    sheet = Image.new("RGB", (label_w + frames * tile, len(chosen) * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for row, i in enumerate(chosen):
        _, jpegs = db.read(i, eval_indices(db.index.num_frames[i], frames).tolist())
        for col, data in enumerate(jpegs):
            img = Image.fromarray(decode_jpeg(data)).resize((tile, tile))
            sheet.paste(img, (label_w + col * tile, row * tile))
        draw.text((4, row * tile + tile // 2 - 6), _row_title(db, i), fill="black")
    sheet.save(path)
    return [db.index.keys[i] for i in chosen]


def _row_title(db: VideoSet, i: int) -> str:
    labels = db.index.labels[i]
    return ", ".join(db.classes[x] for x in labels) if labels else db.index.keys[i]



def _shard_lines(db: ShardedSplit, top: int) -> list[str]:
    """The shards and their state here: each one opened and checked against the manifest."""
    states, missing = [], set(db.missing_shards())
    for number, shard in enumerate(db.shards):
        try:
            db.open_shard(number)
            states.append("ok")
        except DatabaseError as e:
            states.append("missing" if shard.name in missing else f"bad: {e}")
    bad = sum(state != "ok" for state in states)
    lines = [f"shards       {len(db.shards)}, {db.nbytes / 2**20:.1f} MiB"
             + (f"; {bad} missing or bad here" if bad else "; all here and whole")]
    shown = [i for i, state in enumerate(states) if state != "ok"][:top] or list(range(min(top, len(db.shards))))
    for i in shown:
        s = db.shards[i]
        lines.append(f"  {s.name}  {s.videos:>7} videos {s.frames:>9} frames {s.bytes / 2**20:>8.1f} MiB  {states[i]}")
    if len(db.shards) > len(shown):
        lines.append(f"  ... and {len(db.shards) - len(shown)} more")
    return lines
