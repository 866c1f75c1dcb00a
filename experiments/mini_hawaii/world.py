"""A synthetic visual-QA world, deterministic from a seed: scenes of same-looking shapes.

Every scene holds 1-3 shapes of ONE kind and ONE colour, placed in one of four sectors of the
image (cut by its diagonals). Four question types ask about four aspects of it: colour, shape,
count and position, each with a one-word answer. The world is written in LLaVA-1.5's own formats
(captions for stage 1, multi-turn conversations for stage 2, question files for evaluation).

Four disjoint splits, each drawn from its own random stream (so one split's size never changes
another's images): ``train`` (the student's labelled captions and conversations), ``val`` and
``test`` (held-out questions in the same ``model_vqa`` layout; design choices are made on ``val``),
and ``expert`` (images with their aspects only, the experts' own larger training pool).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Each aspect of a scene and its possible values (= the one-word answers).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230),
    "yellow": (235, 220, 40), "purple": (150, 50, 200), "orange": (245, 140, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COUNTS: tuple[str, ...] = ("one", "two", "three")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
ASPECTS: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "shape": SHAPES, "count": COUNTS, "position": POSITIONS}

#: Question of each type (the LLaVA-1.5 short-answer prompt is appended, as for VQAv2 and GQA).
QUESTIONS: dict[str, str] = {
    "color": "What color are the shapes?",
    "shape": "What shape are the objects?",
    "count": "How many shapes are there?",
    "position": "Where are the shapes?",
}
SHORT_ANSWER = "Answer the question using a single word or phrase."
#: The stage-1 instruction (the plain template drops it; kept for the file format's sake).
CAPTION_PROMPT = "Describe the image briefly."
#: Words of the world's texts beyond the tiny tokenizer's default vocabulary.
EXTRA_WORDS: tuple[str, ...] = ("crosses", "answer", "question", "using", "single", "word", "phrase", "objects",
                                "describe", "image", "briefly")

MIN_SIZE, MAX_SIZE = 24, 128


@dataclass(frozen=True)
class Scene:
    """One image's content: the aspects (the answers) and the objects' centres and radii in pixels."""

    color: str
    shape: str
    count: str
    position: str
    objects: tuple[tuple[float, float, float], ...]

    def answer(self, aspect: str) -> str:
        """The one-word answer about ``aspect``."""
        return getattr(self, aspect)


def _place(rng: np.random.Generator, position: str, side: int, radius: float) -> tuple[float, float]:
    """A centre inside ``position``'s sector (cut by the diagonals), ``0.8 * radius`` px away from them."""
    half = (side - 1) / 2
    along = float(rng.uniform(1.3 * radius + 1, half - radius))
    spread = max(along - 0.8 * radius, 0.0)
    across = float(rng.uniform(-spread, spread))
    sign = -1.0 if position in ("left", "top") else 1.0
    dx, dy = (sign * along, across) if position in ("left", "right") else (across, sign * along)
    return half + dx, half + dy


def sample_scene(rng: np.random.Generator, side: int) -> Scene:
    """Draw aspects uniformly, then place the objects without overlap inside the chosen sector."""
    color = str(rng.choice(list(COLORS)))
    shape = str(rng.choice(SHAPES))
    count = int(rng.integers(1, len(COUNTS) + 1))
    position = str(rng.choice(POSITIONS))
    scale = side / 32
    while True:  # rejection sampling on overlaps only; a 32-px sector holds three such shapes easily
        objects: list[tuple[float, float, float]] = []
        for _ in range(50):
            radius = float(rng.uniform(3.0, 4.5) * scale)
            x, y = _place(rng, position, side, radius)
            if all(math.hypot(x - ox, y - oy) > radius + orad + 1.5 for ox, oy, orad in objects):
                objects.append((round(x, 2), round(y, 2), round(radius, 2)))
                if len(objects) == count:
                    return Scene(color, shape, COUNTS[count - 1], position, tuple(objects))


def render(scene: Scene, side: int, rng: np.random.Generator) -> np.ndarray:
    """``(side, side, 3)`` uint8: a noisy gray background and the scene's shapes (colour jittered)."""
    from PIL import Image, ImageDraw

    background = int(rng.integers(70, 170))
    image = Image.new("RGB", (side, side), (background,) * 3)
    draw = ImageDraw.Draw(image)
    base = np.array(COLORS[scene.color])
    for x, y, r in scene.objects:
        fill = tuple(int(v) for v in np.clip(base + rng.integers(-20, 21, size=3), 0, 255))
        if scene.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif scene.shape == "square":
            h = r * 0.85
            draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
        elif scene.shape == "triangle":
            draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)
        else:
            w = r * 0.35
            draw.rectangle((x - r, y - w, x + r, y + w), fill=fill)
            draw.rectangle((x - w, y - r, x + w, y + r), fill=fill)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, size=(side, side, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def caption(scene: Scene) -> str:
    """A short caption naming every aspect, e.g. ``two red circles on the left``."""
    noun = scene.shape if scene.count == "one" else PLURALS[scene.shape]
    side = f"at the {scene.position}" if scene.position in ("top", "bottom") else f"on the {scene.position}"
    return f"{scene.count} {scene.color} {noun} {side} ."


@dataclass(frozen=True)
class WorldFiles:
    """Paths of a written world, relative to its root (the recipes' ``runtime.data_root``)."""

    root: Path
    captions: str = "world/pretrain_captions.json"
    conversations: str = "world/finetune_conversations.json"
    questions: str = "world/test_questions.jsonl"
    answers: str = "world/test_answers.jsonl"
    val_questions: str = "world/val_questions.jsonl"
    val_answers: str = "world/val_answers.jsonl"
    scenes: str = "world/scenes.json"
    images: str = "world/images"

    def path(self, name: str) -> Path:
        """Absolute path of one of the files above, by field name."""
        return self.root / getattr(self, name)

    def qa(self, split: str) -> tuple[Path, Path]:
        """Absolute paths of the question and answer files of a held-out split (``val`` or ``test``)."""
        if split not in HELD_OUT:
            raise ValueError(f"split {split!r} has no question files (held-out splits: {', '.join(HELD_OUT)})")
        prefix = "" if split == "test" else f"{split}_"
        return self.path(f"{prefix}questions"), self.path(f"{prefix}answers")


def _conversation(scene: Scene, rng: np.random.Generator) -> list[dict[str, str]]:
    """All four questions in a random order, the image placeholder in the first human turn (LLaVA-1.5 mix)."""
    turns: list[dict[str, str]] = []
    for k, aspect in enumerate(rng.permutation(list(QUESTIONS))):
        question = f"{QUESTIONS[aspect]}\n{SHORT_ANSWER}"
        turns.append({"from": "human", "value": f"<image>\n{question}" if k == 0 else question})
        turns.append({"from": "gpt", "value": scene.answer(str(aspect))})
    return turns


#: Every split of the world, in the order of their random streams; the held-out ones have question files.
SPLITS: tuple[str, ...] = ("train", "test", "val", "expert")
HELD_OUT: tuple[str, ...] = ("val", "test")


def write_world(root: Path, seed: int, train_images: int, test_images: int, side: int = 32, val_images: int = 0,
                expert_images: int = 0) -> WorldFiles:
    """Generate the world into ``root/world`` (no image is in two splits); returns its files.

    Args:
        root: Data root of the demo.
        seed: Seed of everything in the world (each split draws from its own stream of it).
        train_images: Number of training images (each gives a caption and a 4-question conversation).
        test_images: Number of held-out test images (each gives one question of every type).
        side: Image side in pixels.
        val_images: Number of validation images (questions like the test split's, for design choices).
        expert_images: Number of images of the experts' own pool (aspects in ``scenes.json`` only).
    """
    if not MIN_SIZE <= side <= MAX_SIZE:
        raise ValueError(f"image side {side} is out of range [{MIN_SIZE}, {MAX_SIZE}]")
    from PIL import Image

    files = WorldFiles(Path(root))
    sizes = {"train": train_images, "test": test_images, "val": val_images, "expert": expert_images}
    captions, conversations, scenes = [], [], []
    held: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {s: ([], []) for s in HELD_OUT}
    for stream, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, stream])
        folder = files.path("images") / split
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(sizes[split]):
            scene = sample_scene(rng, side)
            name = f"{split}/{index:06d}.png"
            Image.fromarray(render(scene, side, rng)).save(folder / f"{index:06d}.png")
            scenes.append({"split": split, "image": name, **{k: v for k, v in asdict(scene).items() if k != "objects"}})
            ident = f"{split}{index:06d}"
            if split == "train":
                captions.append({"id": ident, "image": name, "conversations": [
                    {"from": "human", "value": f"{CAPTION_PROMPT}\n<image>"}, {"from": "gpt", "value": caption(scene)}]})
                conversations.append({"id": ident, "image": name, "conversations": _conversation(scene, rng)})
            elif split in held:
                questions, answers = held[split]
                for aspect in QUESTIONS:
                    qid = len(questions)
                    questions.append({"question_id": qid, "image": name,
                                      "text": f"{QUESTIONS[aspect]}\n{SHORT_ANSWER}", "category": aspect})
                    answers.append({"question_id": qid, "answer": scene.answer(aspect)})
    files.path("captions").write_text(json.dumps(captions, indent=1), encoding="utf-8")
    files.path("conversations").write_text(json.dumps(conversations, indent=1), encoding="utf-8")
    files.path("scenes").write_text(json.dumps(scenes, indent=1), encoding="utf-8")
    for split, (questions, answers) in held.items():
        question_file, answer_file = files.qa(split)
        question_file.write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
        answer_file.write_text("".join(json.dumps(a) + "\n" for a in answers), encoding="utf-8")
    return files


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of one of the world's JSON-lines files."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_scenes(files: WorldFiles, split: str) -> list[dict[str, str]]:
    """The scene records (image path + aspects) of one split."""
    records = json.loads(files.path("scenes").read_text(encoding="utf-8"))
    return [r for r in records if r["split"] == split]


def vocabulary_words() -> list[str]:
    """Every word the world's texts use, for the tiny tokenizer (answers, questions, captions)."""
    words: list[str] = [*EXTRA_WORDS]
    for values in ASPECTS.values():
        words += values
    texts = [*QUESTIONS.values(), SHORT_ANSWER, CAPTION_PROMPT, "on the at"]
    words += [w.strip("?.").lower() for t in texts for w in t.split()]
    words += list(PLURALS.values())
    return sorted(set(words))
