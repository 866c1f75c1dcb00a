"""Loading a LLaVA student: a saved LLaVA model, or (LLaVA-1.5 stage 1) a CLIP vision tower and a
causal LM joined by a fresh 2-layer GELU projector (Liu et al., "Improved Baselines with Visual
Instruction Tuning", CVPR 2024). Every bad input is refused here, naming the path and field.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from kdkit.errors import CheckpointError, FilesNotFound, KdkitError

if TYPE_CHECKING:
    from kdkit import BuildContext

#: OpenAI CLIP's normalisation, used when no image-processor config says otherwise.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE = "<image>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Loaded(NamedTuple):
    """A loaded LLaVA model, its tokenizer (knowing ``<image>``) and the CLIP normalisation."""

    model: nn.Module
    tokenizer: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]


def model_dir(context: BuildContext, value: str, field: str, needs: str = "config.json") -> Path:
    """``value`` resolved against the data root; must be a directory holding ``needs``."""
    path = context.resolve(value)
    if not path.is_dir():
        raise FilesNotFound(f"student.{field}: directory {str(path)!r} does not exist (relative paths resolve "
                            "against runtime.data_root)")
    if not (path / needs).is_file():
        raise FilesNotFound(f"student.{field}: {str(path)!r} has no {needs}; give a directory written by "
                            "transformers' save_pretrained")
    return path


def read_config(path: Path, field: str) -> dict[str, Any]:
    """The raw ``config.json`` of a model directory."""
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"student.{field}: {str(path / 'config.json')!r} is not valid JSON ({exc})") from None


def normalisation(*directories: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``image_mean`` / ``image_std`` of the first ``preprocessor_config.json`` found, else OpenAI CLIP's."""
    for directory in directories:
        file = directory / "preprocessor_config.json"
        if file.is_file():
            data = json.loads(file.read_text(encoding="utf-8"))
            if "image_mean" in data and "image_std" in data:
                return tuple(data["image_mean"]), tuple(data["image_std"])
    return CLIP_MEAN, CLIP_STD


def _from_pretrained(cls: Any, path: Path, field: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` that refuses a checkpoint with missing or unexpected weights."""
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except Exception as exc:  # OSError, ValueError, safetensors' own error on a truncated file...
        raise CheckpointError(f"student.{field}: transformers cannot load {str(path)!r}: {exc}") from None
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise CheckpointError(f"student.{field}: {str(path)!r} does not hold every weight of its model: missing "
                              f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, mismatched {mismatched[:5]}")
    return model


def _from_config(cls: Any, path: Path, field: str, **kwargs: Any) -> Any:
    """``cls`` built from ``path``'s ``config.json`` on the meta device: the parameter names and shapes of
    :func:`_from_pretrained`'s model, no weight file read (``dtype`` and ``attn_implementation`` as there)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 -- an unknown model_type, a config transformers cannot parse
        raise CheckpointError(f"student.{field}: transformers cannot read {str(path / 'config.json')!r}: {exc}") from None
    config._attn_implementation = kwargs.get("attn_implementation")
    with torch.device("meta"):
        build = getattr(cls, "from_config", None) or cls._from_config  # Auto classes / a model class
        return build(config).to(kwargs.get("dtype", torch.float32))


def _skeleton_device(weights: bool) -> AbstractContextManager[Any]:
    """Where new modules go: as usual with ``weights``, else on the meta device (a skeleton)."""
    return nullcontext() if weights else torch.device("meta")


def load_tokenizer(path: Path, field: str) -> tuple[Any, int]:
    """A saved transformers tokenizer, with ``<image>`` added as a special token when missing (then 1, else 0)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"student.{field}: no tokenizer can be loaded from {str(path)!r} ({exc}); point "
                              "student.tokenizer at a directory written by tokenizer.save_pretrained") from None
    if IMAGE in tokenizer.get_vocab():
        return tokenizer, 0
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE]})
    return tokenizer, 1


def tokenizer_dir(config: Any, context: BuildContext, default: Path) -> Path:
    """``student.tokenizer`` (checked to be a saved tokenizer), else ``default``."""
    if config.tokenizer is None:
        return default
    return model_dir(context, config.tokenizer, "tokenizer", needs="tokenizer_config.json")


def check_tokenizer(tokenizer: Any, text_config: Any, field: str, added: int) -> None:
    """Refuse a tokenizer that does not belong to the LM (more tokens than rows, other specials)."""
    size, rows = len(tokenizer) - added, text_config.vocab_size
    if size > rows:
        raise KdkitError(f"student.{field}: the tokenizer has {size} tokens but the language model's vocabulary has "
                         f"{rows} rows; use the tokenizer saved with the language model")
    for special in ("bos", "eos"):
        expected = getattr(text_config, f"{special}_token_id", None)
        found = getattr(tokenizer, f"{special}_token_id", None)
        if isinstance(expected, int) and found is not None and found != expected:
            raise KdkitError(f"student.{field}: the tokenizer's {special} id is {found} but the language model's is "
                             f"{expected}; use the tokenizer saved with the language model")


def _fit_image_token(model: nn.Module, tokenizer: Any) -> None:
    """Point the config at the tokenizer's ``<image>`` id; grow the embeddings if the id is new."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    model.config.image_token_id = image_id
    if image_id >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def load_checkpoint(config: Any, context: BuildContext, weights: bool = True) -> Loaded:
    """A saved ``LlavaForConditionalGeneration`` (``student.checkpoint``) and its tokenizer (``weights``
    False: its skeleton on the meta device, see :func:`_from_config`)."""
    path = model_dir(context, config.checkpoint, "checkpoint")
    from transformers import LlavaForConditionalGeneration  # after the cheap checks: a second to import

    raw = read_config(path, "checkpoint")
    if not isinstance(raw.get("vision_config"), dict):
        raise KdkitError(f"student.checkpoint: {str(path / 'config.json')!r} has no vision_config (model_type "
                         f"{raw.get('model_type')!r}): it is not a LLaVA model with a vision tower; for stage 1, give "
                         "student.vision (a CLIP directory) and student.language_model instead")
    tokenizer_field = "tokenizer" if config.tokenizer else "checkpoint"
    tokenizer, added = load_tokenizer(tokenizer_dir(config, context, path), tokenizer_field)
    load = _from_pretrained if weights else _from_config
    model = load(LlavaForConditionalGeneration, path, "checkpoint", dtype=DTYPES[config.torch_dtype],
                 attn_implementation=config.attn_implementation)
    check_tokenizer(tokenizer, model.config.text_config, tokenizer_field, added)
    with _skeleton_device(weights):  # a skeleton grows its embeddings on the meta device too
        _fit_image_token(model, tokenizer)
    return Loaded(model, tokenizer, *normalisation(path))


def assemble(config: Any, context: BuildContext, weights: bool = True) -> Loaded:
    """A CLIP vision tower + a causal LM joined by a fresh projector (LLaVA-1.5 stage 1; ``weights`` False:
    its skeleton on the meta device, see :func:`_from_config`)."""
    vision_path = model_dir(context, config.vision, "vision")
    llm_path = model_dir(context, config.language_model, "language_model")
    from transformers import AutoModel, AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    raw = read_config(vision_path, "vision")
    if "vision_config" not in raw and "image_size" not in raw:
        raise KdkitError(f"student.vision: {str(vision_path / 'config.json')!r} (model_type {raw.get('model_type')!r}) "
                         "describes no vision tower; give a CLIPVisionModel or CLIPModel directory")
    dtype = DTYPES[config.torch_dtype]
    load = _from_pretrained if weights else _from_config
    tower = load(AutoModel, vision_path, "vision", dtype=dtype, attn_implementation=config.attn_implementation)
    tower = tower.get_encoder(modality="image")
    llm = load(AutoModelForCausalLM, llm_path, "language_model", dtype=dtype,
               attn_implementation=config.attn_implementation)
    tokenizer_field = "tokenizer" if config.tokenizer else "language_model"
    tokenizer, added = load_tokenizer(tokenizer_dir(config, context, llm_path), tokenizer_field)
    check_tokenizer(tokenizer, llm.config, tokenizer_field, added)
    side = tower.config.image_size // tower.config.patch_size
    strategy = config.vision_feature_select_strategy or "default"
    llava_config = LlavaConfig(
        vision_config=tower.config.to_dict(), text_config=llm.config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=side * side + (strategy == "full"), projector_hidden_act=config.projector_hidden_act,
        vision_feature_layer=-2 if config.vision_feature_layer is None else config.vision_feature_layer,
        vision_feature_select_strategy=strategy, pad_token_id=tokenizer.pad_token_id)
    llava_config._attn_implementation = config.attn_implementation
    with torch.device("meta"):  # the shell only: its tower, LM and head are replaced by the loaded ones
        model = LlavaForConditionalGeneration(llava_config)
    model.model.vision_tower = tower
    model.model.language_model = llm.get_decoder()
    model.lm_head = llm.get_output_embeddings()
    with _skeleton_device(weights):
        model.model.multi_modal_projector = LlavaMultiModalProjector(llava_config).to(dtype)  # fresh, nn.Linear init
    model.config.vision_config, model.config.text_config = tower.config, llm.config
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover and weights:
        raise KdkitError(f"student: assembling LLaVA left unloaded tensors {leftover[:5]}; this transformers "
                         "version lays LLaVA out differently than kdkit expects")
    with _skeleton_device(weights):  # a skeleton grows its embeddings on the meta device too
        _fit_image_token(model, tokenizer)
    return Loaded(model, tokenizer, *normalisation(vision_path))
