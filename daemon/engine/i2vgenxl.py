"""diffusers' I2VGenXLPipeline with the changes the daemon needs (imports torch: load lazily).

1. ``encode_prompt`` works with transformers 5.x (see the method's comment).
2. Per-step progress reporting: the pipeline has no ``callback_on_step_end``
   (``daemon.engine.step_progress``).
"""

from __future__ import annotations

import torch
from diffusers import I2VGenXLPipeline

from daemon.engine.step_progress import StepProgressMixin


class DaemonI2VGenXLPipeline(StepProgressMixin, I2VGenXLPipeline):
    """Loads any I2VGen-XL folder or Hub id (``from_pretrained`` is inherited unchanged)."""

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_videos_per_prompt: int,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Why this override: the pipeline's __call__ defaults to clip_skip=1 (I2VGen-XL was trained on
        # the penultimate CLIP layer), and that branch reads `text_encoder.text_model.final_layer_norm`.
        # transformers 5.x's CLIPTextModel dropped the `.text_model` wrapper (the layer norm is now
        # `text_encoder.final_layer_norm`), so upstream raises AttributeError. Passing clip_skip=None
        # would "work" but feed the last layer instead of the penultimate one: different embeddings,
        # a silently different model. So we compute the clip_skip embeddings here, with the
        # pipeline's exact tokenization, and let upstream do only the dtype/repeat bookkeeping.
        if clip_skip is None:
            return super().encode_prompt(
                prompt, device, num_videos_per_prompt, negative_prompt, prompt_embeds, negative_prompt_embeds
            )
        if prompt_embeds is None:
            prompt_embeds = self._clip_skip_embeds(prompt, self.tokenizer.model_max_length, device, clip_skip)
        if self.do_classifier_free_guidance and negative_prompt_embeds is None:
            uncond = "" if negative_prompt is None else negative_prompt
            if isinstance(uncond, str):
                uncond = [uncond] * prompt_embeds.shape[0]
            negative_prompt_embeds = self._clip_skip_embeds(uncond, prompt_embeds.shape[1], device, clip_skip)
        return super().encode_prompt(
            None,
            device,
            num_videos_per_prompt,
            None,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            clip_skip=None,
        )

    def _clip_skip_embeds(
        self, text: str | list[str] | None, max_length: int, device: torch.device, clip_skip: int
    ) -> torch.Tensor:
        """Hidden state ``clip_skip`` layers before the last, through the final layer norm (as upstream)."""
        tokens = self.tokenizer(
            text, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        out = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask, output_hidden_states=True)
        # transformers 5.x: `text_encoder.final_layer_norm`; 4.x: `text_encoder.text_model.final_layer_norm`.
        encoder = self.text_encoder
        norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm
        return norm(out.hidden_states[-(clip_skip + 1)])
