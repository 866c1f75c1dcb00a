"""What ``transformers.AutoProcessor`` needs to feed an exported LLaVA student like training did
(Liu et al., "Improved Baselines with Visual Instruction Tuning", CVPR 2024): LLaVA-1.5's image
preprocessing (pad to square with the mean colour, bicubic resize) and a chat template that writes
the student's conversation template (``llava_json``'s ``vicuna_v1`` or ``plain``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from kdkit.errors import KdkitError

if TYPE_CHECKING:
    from kdkit_plugins.students.llava import LlavaStudent


def chat_template(name: str) -> str:
    """The Jinja chat template writing the conversation template ``name`` as text.

    Messages use transformers' multimodal form (``{"role": "user", "content": [{"type": "image"},
    {"type": "text", "text": ...}]}``); images go first in a user turn, followed by ``"\\n"``, as the
    ``llava_json`` data plugin moves them. The tokenizer adds ``<s>`` itself, so the template does not.

    Raises:
        KdkitError: a template name without a chat-template form.
    """
    from kdkit_plugins.data.conversation import VICUNA_SYSTEM

    user = ("{% for c in message['content'] if c['type'] == 'image' %}<image>\n{% endfor %}"
            "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}")
    answer = "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}"
    if name == "vicuna_v1":
        return ("{%- if messages and messages[0]['role'] == 'system' -%}"
                "{{ messages[0]['content'][0]['text'] if messages[0]['content'] is not string else messages[0]['content'] }}"
                "{%- set messages = messages[1:] -%}"
                "{%- else -%}" + json.dumps(VICUNA_SYSTEM)[1:-1] + "{%- endif -%}"
                "{%- for message in messages %}"
                "{%- if message['role'] == 'user' %} USER: " + user +
                "{%- elif message['role'] == 'assistant' %} ASSISTANT: " + answer + "</s>"
                "{%- endif %}{%- endfor -%}"
                "{%- if add_generation_prompt %} ASSISTANT:{% endif -%}")
    if name == "plain":  # LLaVA's pre-training format: the image, then the caption
        return ("{%- for message in messages -%}"
                "{%- if message['role'] == 'user' -%}"
                "{%- for c in message['content'] if c['type'] == 'image' %}<image>{% endfor -%}"
                "{%- elif message['role'] == 'assistant' -%}" + answer + "\n{%- endif -%}{%- endfor -%}")
    raise KdkitError(f"student.template: {name!r} has no chat-template form (known: plain, vicuna_v1)")


def build_processor(student: LlavaStudent) -> Any:
    """A ``LlavaProcessor`` for ``student``: its tokenizer, LLaVA-1.5 image preprocessing at the tower's
    input side with its normalisation, and :func:`chat_template` of its conversation template.

    One image becomes ``student.image_tokens`` ``<image>`` tokens, as the data plugin expands it.
    """
    from transformers import LlavaImageProcessor, LlavaProcessor

    side = student.image_size
    images = LlavaImageProcessor(
        do_pad=True, size={"shortest_edge": side}, crop_size={"height": side, "width": side},
        image_mean=list(student.mean), image_std=list(student.std), resample=3)  # 3: PIL bicubic, as CLIP
    patch = student.model.config.vision_config.patch_size
    return LlavaProcessor(image_processor=images, tokenizer=student.tokenizer, patch_size=patch,
                          vision_feature_select_strategy=student.strategy, num_additional_image_tokens=1,
                          chat_template=chat_template(student.template))
