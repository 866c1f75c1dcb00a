"""Conversation templates of LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023).

A template turns a record's turns into :class:`Piece` s: spans of text (or the bos, eos and image
placeholders) that each carry whether they are trained on and whether they are instruction text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kdkit.errors import KdkitError, unknown_name_message

#: The image placeholder in LLaVA's JSON text.
IMAGE = "<image>"

#: LLaVA-1.5's vicuna_v1 system prompt.
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

#: A turn: (``"human"`` or ``"gpt"``, text).
Turn = tuple[str, str]


@dataclass(frozen=True)
class Piece:
    """One span of a formatted conversation.

    Attributes:
        kind: ``"text"``, ``"bos"``, ``"eos"`` or ``"image"`` (expanded to the image tokens).
        text: The text of a ``"text"`` piece.
        train: Its tokens are labels (answer text and its end marker).
        instruction: Its tokens are instruction text (what the user wrote in a human turn).
    """

    kind: Literal["text", "bos", "eos", "image"]
    text: str = ""
    train: bool = False
    instruction: bool = False


def human_pieces(text: str) -> list[Piece]:
    """A human turn's text -> instruction pieces, ``<image>`` placeholders and the newline after them.

    The ``"\\n"`` that follows a placeholder is layout (LLaVA inserts it when it moves the image to
    the start of the turn), not instruction.
    """
    pieces: list[Piece] = []
    for position, chunk in enumerate(text.split(IMAGE)):
        if position:
            pieces.append(Piece("image"))
            if chunk.startswith("\n"):
                pieces.append(Piece("text", "\n"))
                chunk = chunk[1:]
        if chunk:
            pieces.append(Piece("text", chunk, instruction=True))
    return pieces


@dataclass(frozen=True)
class Template:
    """A conversation format.

    Attributes:
        name: Registered name (the data config's ``template``).
        format: Turns (alternating, human first) and whether the record has an image -> pieces.
        check: The same -> a reason the record does not fit this template, or None.
    """

    name: str
    format: Callable[[list[Turn], bool], list[Piece]]
    check: Callable[[list[Turn], bool], str | None]


def _plain(turns: list[Turn], has_image: bool) -> list[Piece]:
    """LLaVA's ``preprocess_plain``: the human turn is only the image; caption + ``"\\n"`` is trained."""
    del has_image
    caption = turns[1][1]
    return [Piece("bos"), Piece("image"), Piece("text", caption, train=True), Piece("text", "\n", train=True)]


def _check_plain(turns: list[Turn], has_image: bool) -> str | None:
    if len(turns) != 2 or not has_image:
        return (f"template 'plain' needs one image and exactly one human and one gpt turn "
                f"(got {len(turns)} turns, {'an' if has_image else 'no'} image)")
    return None


def _vicuna_v1(turns: list[Turn], has_image: bool) -> list[Piece]:
    """``<s>SYSTEM USER: q ASSISTANT: a</s>USER: ...``: only each answer and its ``</s>`` are trained."""
    del has_image
    pieces = [Piece("bos"), Piece("text", VICUNA_SYSTEM)]
    for role, text in turns:
        if role == "human":
            pieces += [Piece("text", " USER:"), *human_pieces(" " + text)]
        else:
            pieces += [Piece("text", " ASSISTANT:"), Piece("text", " " + text, train=True), Piece("eos", train=True)]
    return [p for p in pieces if p.kind != "text" or p.text.strip() or p.text == "\n"]


def _check_any(turns: list[Turn], has_image: bool) -> str | None:
    del turns, has_image
    return None


#: Templates by name.
TEMPLATES: dict[str, Template] = {
    "plain": Template("plain", _plain, _check_plain),
    "vicuna_v1": Template("vicuna_v1", _vicuna_v1, _check_any),
}


def prompt_pieces(template: Template, question: str, has_image: bool) -> list[Piece]:
    """The pieces a model continues to answer ``question`` (ending with the assistant's role tag).

    ``<image>`` in ``question`` is moved to its start as in training; with ``has_image`` and no
    placeholder, one is added there.
    """
    if has_image and IMAGE not in question:
        question = IMAGE + "\n" + question
    elif IMAGE in question:
        question = (IMAGE + "\n" + question.replace(IMAGE, "").strip()).strip()
    pieces = template.format([("human", question), ("gpt", "")], has_image)
    while pieces and pieces[-1].train:
        pieces.pop()
    return pieces


def get_template(name: str) -> Template:
    """The template called ``name``.

    Raises:
        KdkitError: no such template (the message lists the known ones).
    """
    if name not in TEMPLATES:
        raise KdkitError(f"llava_json.template: {unknown_name_message('conversation template', name, TEMPLATES)}")
    return TEMPLATES[name]
