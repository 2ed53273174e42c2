"""What LTX-2's image-to-video call takes beyond the shared arguments (``FAMILIES["ltx2"].extra_kwargs``).

LTX-2 makes a sound track with every clip, denoised jointly with the video (each attends to the other).
i2vd's clips are video-only: diffusers' ``LTX2ImageToVideoPipeline`` decodes the sound every time (it
has no option to skip it; the audio VAE and vocoder are small beside the video VAE) and the engine
keeps only ``.frames``, so the sound is dropped. Guidance on the sound still runs, since it shapes
the video through that joint attention.
"""

from __future__ import annotations

from typing import Any

# diffusers' recommended STG block for LTX-2.0 (its pipeline default, 28, is LTX-2.3's).
LTX20_STG_BLOCK = 29


def ltx2_kwargs(req: Any, pipe: Any, _num_frames: int) -> dict[str, Any]:
    """The clip's fps as the model's frame rate; the checkpoint's generation; guidance off when unguided.

    - ``frame_rate``: LTX-2 conditions its positions on it (and times the sound by it).
    - LTX-2.0 (a transformer without the cross-attention modulation LTX-2.3 added) is called the legacy
      way diffusers documents for it: ``use_cross_timestep=False``, STG at block 29.
    - ``guidance_scale`` 1 or less (the distilled checkpoints and adapters, 8 steps at guidance 1): the
      pipeline would still run classifier-free guidance for the sound (its default audio guidance is
      7), spatio-temporal and modality guidance; all are turned off, one transformer pass per step.
    """
    kwargs: dict[str, Any] = {"frame_rate": float(req.fps)}
    config = pipe.transformer.config if pipe is not None else None
    if config is not None and not (config.cross_attn_mod or config.audio_cross_attn_mod):
        kwargs.update(use_cross_timestep=False, spatio_temporal_guidance_blocks=[LTX20_STG_BLOCK])
    if req.guidance_scale <= 1.0:
        kwargs.update(
            audio_guidance_scale=1.0,
            stg_scale=0.0,
            audio_stg_scale=0.0,
            modality_scale=1.0,
            audio_modality_scale=1.0,
        )
    return kwargs
