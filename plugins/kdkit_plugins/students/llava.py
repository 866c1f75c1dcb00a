"""A LLaVA-1.5 VLM as the student (Liu et al., CVPR 2024), as HAWAII distils into it (Wang et al.,
NeurIPS 2025, arXiv 2506.19072): the distilled features I^S are what its CLIP tower feeds the projector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from kdkit import BuildContext, Example, Factory, GridSpec, PluginConfig, hookimpl
from kdkit.errors import DataError, KdkitError
from kdkit.interfaces import StudentOutput


class LlavaStudentConfig(PluginConfig):
    """A transformers LlavaForConditionalGeneration: a saved LLaVA, or a CLIP tower + an LM + a fresh projector."""

    kind: Literal["llava"] = "llava"
    checkpoint: str | None = Field(None, description="Local LLaVA directory (transformers save_pretrained, with its "
                                   "tokenizer); relative paths resolve against runtime.data_root.")
    vision: str | None = Field(None, description="Stage-1 assembly: local CLIP directory (a CLIPVisionModel or a full "
                               "CLIPModel save) whose vision tower becomes the student's.")
    language_model: str | None = Field(None, description="Stage-1 assembly: local causal-LM directory (Llama, Vicuna) "
                                       "with its tokenizer.")
    tokenizer: str | None = Field(None, description="Local tokenizer directory (default: the checkpoint's or the "
                                  "language model's); `<image>` is added when it is missing.")
    projector_hidden_act: str = Field("gelu", description="Activation of the fresh 2-layer projector (assembly only).")
    vision_feature_layer: int | None = Field(None, description="Tower hidden state fed to the projector (0 = "
                                             "embeddings, -1 = last layer). Default: the LLaVA config's, -2 when assembling.")
    vision_feature_select_strategy: Literal["default", "full"] | None = Field(
        None, description="'default' drops the CLS token, 'full' keeps it (fed to the projector; the distilled "
        "features stay the patch grid). Default: the LLaVA config's, 'default' when assembling.")
    torch_dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Dtype the weights load in.")
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="transformers attention implementation.")
    template: str = Field("vicuna_v1", description="Conversation template of generate() prompts (as in llava_json).")

    @model_validator(mode="after")
    def _one_source(self) -> LlavaStudentConfig:
        parts = self.vision is not None or self.language_model is not None
        if self.checkpoint is None and not (self.vision and self.language_model):
            raise ValueError("give either checkpoint (a LLaVA directory) or both vision and language_model "
                             "(stage-1 assembly with a fresh projector)")
        if self.checkpoint is not None and parts:
            raise ValueError("give either checkpoint or vision + language_model, not both")
        return self


class LlavaStudent:
    """LLaVA: raw view ``(B, 3, H, W)`` in [0, 1] -> CLIP patch features ``(B, m, D)``, and the LM loss.

    Args:
        model: A ``LlavaForConditionalGeneration``.
        tokenizer: Its tokenizer (knows ``<image>``).
        mean: CLIP normalisation mean.
        std: CLIP normalisation std.
        feature_layer: Tower hidden state fed to the projector (index into ``hidden_states``).
        strategy: ``"default"`` (patch tokens) or ``"full"`` (CLS + patch tokens) into the projector.
        template: Conversation template name of :meth:`generate`.

    Attributes (read by the ``llava_json`` data plugin): ``tokenizer``, ``image_token_id``,
    ``image_tokens`` (tokens one ``<image>`` becomes), ``image_size`` (the tower's input side).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, mean: tuple[float, ...], std: tuple[float, ...],
                 feature_layer: int, strategy: str, template: str = "vicuna_v1") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.mean, self.std = mean, std
        self.feature_layer, self.strategy, self.template = feature_layer, strategy, template
        self.vision_tower = model.get_encoder(modality="image")
        self.projector = model.base_model.multi_modal_projector
        self.adapter_target = self.vision_tower
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        self.image_size = int(vision.image_size)
        self.prefix = 1 if strategy == "full" else 0  # the CLS token kept in front of the grid
        self.feature_spec = GridSpec(side, side, int(vision.hidden_size))
        self.image_tokens = side * side + self.prefix
        self.image_token_id = int(model.config.image_token_id)
        self.text_dim: int | None = int(model.config.text_config.hidden_size)

    # features ---------------------------------------------------------------------------------
    def pixels(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, S, S)`` CLIP-normalised at the tower's input side."""
        size = (self.image_size, self.image_size)
        if tuple(images.shape[-2:]) != size:  # CLIP resizes bicubic
            images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        mean = images.new_tensor(self.mean).view(3, 1, 1)
        std = images.new_tensor(self.std).view(3, 1, 1)
        return (images - mean) / std

    def select(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> the projector's input ``(B, prefix + m, D)`` (ONE tower pass, adapters as routed)."""
        dtype = next(self.vision_tower.parameters()).dtype
        out = self.vision_tower(pixel_values=self.pixels(images).to(dtype), output_hidden_states=True)
        hidden = out.hidden_states[self.feature_layer]
        return hidden[:, 1:] if self.strategy == "default" else hidden

    def encode(self, images: Tensor) -> Tensor:
        """Raw shared view ``(B, 3, H, W)`` in [0, 1] -> ``I^S`` ``(B, m, D)``: the patch grid LLaVA projects."""
        return self.select(images)[:, self.prefix:]

    def embed(self, selected: Tensor, input_ids: Tensor, has_image: Tensor) -> tuple[Tensor, Tensor]:
        """Projector input ``(B, n, D)``, ids ``(B, L)``, ``(B,)`` bool -> token and multimodal embeddings ``(B, L, E)``.

        The projected features of the samples with an image replace their ``<image>`` tokens, in order.
        """
        tokens = self.model.get_input_embeddings()(input_ids)
        placeholders = input_ids == self.image_token_id
        counts = placeholders.sum(1)
        expected = has_image.long() * self.image_tokens
        if not torch.equal(counts, expected):
            raise DataError(f"llava student: <image> tokens per sample {counts.tolist()} do not match "
                            f"{expected.tolist()} ({self.image_tokens} per sample with an image); the data must expand "
                            "each <image> to student.image_tokens copies of student.image_token_id")
        projected = self.projector(selected[has_image]).to(tokens.dtype)
        return tokens, tokens.masked_scatter(placeholders.unsqueeze(-1), projected)

    def __call__(self, batch: Mapping[str, Any]) -> StudentOutput:
        """Batch (``images``, ``input_ids``, ``attention_mask``, ``labels``, ``instruction_mask``, ``has_image``) ->
        ``I^S`` ``(B, m, D)``, the LM loss on answer tokens, logits ``(B, L, V)``, instruction embeddings ``(B, L, E)``."""
        images, input_ids = batch["images"], batch["input_ids"]
        has_image = batch.get("has_image")
        if has_image is None:
            has_image = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        selected = self.select(images)
        tokens, embeds = self.embed(selected, input_ids, has_image.bool())
        out = self.model(inputs_embeds=embeds, attention_mask=batch.get("attention_mask"), labels=batch.get("labels"),
                         use_cache=False)  # a batch forward keeps no KV cache (generate() runs its own)
        return StudentOutput(features=selected[:, self.prefix:], task_loss=out.loss, logits=out.logits,
                             text=tokens.detach(), text_mask=batch.get("instruction_mask"))

    # training support -------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[str]]:
        """``vision_base`` (the tower), ``projector``, ``llm`` (decoder, embeddings and LM head)."""
        owners = {id(self.vision_tower): "vision_base", id(self.projector): "projector",
                  id(self.model.get_decoder()): "llm", id(self.model.get_output_embeddings()): "llm"}
        groups: dict[str, list[str]] = {"projector": [], "vision_base": [], "llm": []}
        prefixes = [(f"{name}.", owners[id(module)]) for name, module in self.model.named_modules() if id(module) in owners]
        for name, _ in self.model.named_parameters():
            group = next((g for prefix, g in prefixes if name.startswith(prefix)), None)
            if group is None:
                raise KdkitError(f"llava student: parameter {name!r} belongs to no known part of the model")
            groups[group].append(name)
        return groups

    def shard_units(self) -> list[nn.Module]:
        """Modules FSDP2 shards one by one: the tower's layers and the LM's decoder layers."""
        return [*_layers(self.vision_tower, self.model.config.vision_config.num_hidden_layers),
                *_layers(self.model.get_decoder(), self.model.config.text_config.num_hidden_layers)]

    def enable_gradient_checkpointing(self, context_fn: Callable[[], Any] | None = None) -> None:
        """Recompute every tower and decoder layer in the backward pass; ``context_fn`` replays adapter routing.

        transformers also hooks every sub-model's input embeddings to require grad (what reentrant
        checkpointing needs for frozen layers); non-reentrant checkpointing does not, and the hooks
        would pull a frozen tower into the graph: its 24 layers kept and run backward for no
        parameter (LLaVA-1.5's stage 2). They are removed, so gradient flows only where a
        parameter trains.
        """
        kwargs: dict[str, Any] = {"use_reentrant": False}
        if context_fn is not None:
            kwargs["context_fn"] = context_fn
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        self.model.disable_input_require_grads()

    # inference --------------------------------------------------------------------------------
    def export(self, directory: Path) -> dict[str, Any]:
        """Save the model and its processor (tokenizer, LLaVA-1.5 image preprocessing, chat template) with
        ``save_pretrained`` into ``directory``; the config fields that reload it."""
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.processor().save_pretrained(directory)
        return {"checkpoint": ".", "vision": None, "language_model": None, "tokenizer": None,
                "vision_feature_layer": self.feature_layer, "vision_feature_select_strategy": self.strategy}

    def processor(self) -> Any:
        """A ``transformers.LlavaProcessor`` that prepares inputs as training did (see ``llava_processor``)."""
        from kdkit_plugins.students.llava_processor import build_processor

        return build_processor(self)

    @torch.no_grad()
    def generate(self, images: Tensor, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
        """Raw views ``(B, 3, S, S)`` in [0, 1] + questions -> greedy answers (same feature path as training)."""
        from kdkit_plugins.students._llava_generate import greedy

        return greedy(self, images, prompts, max_new_tokens)

    def load_image(self, path: str | Path | bytes) -> Tensor:
        """An image file (path or encoded bytes) -> ``(1, 3, S, S)`` in [0, 1]: padded to square with the CLIP
        mean, as the data plugin does."""
        from kdkit_plugins.students._llava_generate import load_image

        return load_image(path, self.image_size, self.mean)  # type: ignore[arg-type]


def _layers(module: nn.Module, count: int) -> list[nn.Module]:
    """The ``nn.ModuleList`` of ``count`` layers inside ``module`` (found by length, not by attribute name)."""
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and len(child) == count:
            return list(child)
    raise KdkitError(f"llava student: no list of {count} layers found in {type(module).__name__}")


def build(config: LlavaStudentConfig, context: BuildContext, weights: bool = True) -> LlavaStudent:
    """Load (or assemble) the LLaVA model and its tokenizer; check the feature layer.

    ``weights`` False builds the skeleton instead: the same model from the config files on the meta
    device, no weight file read (``kdkit validate`` reads its parameter names).
    """
    from kdkit_plugins.students._llava_assemble import assemble, load_checkpoint

    loaded = (load_checkpoint(config, context, weights) if config.checkpoint is not None
              else assemble(config, context, weights))
    model_config = loaded.model.config
    layer = config.vision_feature_layer if config.vision_feature_layer is not None else model_config.vision_feature_layer
    strategy = config.vision_feature_select_strategy or model_config.vision_feature_select_strategy
    depth = model_config.vision_config.num_hidden_layers
    if not isinstance(layer, int) or not -(depth + 1) <= layer <= depth:
        raise KdkitError(f"student.vision_feature_layer: {layer!r} is not a hidden state of the {depth}-layer tower "
                         f"(use an integer in [{-(depth + 1)}, {depth}]; 0 is the embeddings)")
    model_config.vision_feature_layer, model_config.vision_feature_select_strategy = layer, strategy
    return LlavaStudent(loaded.model, loaded.tokenizer, loaded.mean, loaded.std, layer, strategy, config.template)


def skeleton(config: LlavaStudentConfig, context: BuildContext) -> LlavaStudent:
    """:func:`build` on the meta device from the config files and the tokenizer (no weight file read)."""
    return build(config, context, weights=False)


def example(tmp_dir: Path) -> Example:
    """A tiny LLaVA (4x4 CLIP grid, width 32, 2-layer Llama) written to ``tmp_dir`` and loaded back."""
    from kdkit_plugins.fixtures.llava import write_tiny_llava

    if not (tmp_dir / "llava" / "config.json").is_file():
        write_tiny_llava(tmp_dir / "llava")
    return Example(config={"kind": "llava", "checkpoint": "llava"}, context=BuildContext(name="student", data_root=tmp_dir))


@hookimpl
def kdkit_students() -> dict[str, Factory]:
    return {"llava": Factory(config=LlavaStudentConfig, build=build, example=example, skeleton=skeleton)}
