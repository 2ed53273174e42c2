"""diffusers' HunyuanVideo15ImageToVideoPipeline, called the way every other family is called (imports
torch: load lazily).

The upstream call differs from the other image-to-video pipelines in three ways, each undone here:

1. Size: it takes no ``height``/``width``. It picks a size itself from the image's aspect ratio, the
   bucket whose area is nearest ``transformer.config.target_size`` squared (640: about 480p; 960:
   about 720p), so a job's resolution setting would be ignored and the clip would not have the size
   the daemon promised. This class takes ``height``/``width`` and makes exactly that size; the image
   is centre-cropped to it as upstream does (the daemon already hands it an image of that size).
2. Guidance: it takes no ``guidance_scale``; a guider component (``guider``, classifier-free guidance
   with the scale the checkpoint ships) applies it. This class takes ``guidance_scale`` and sets it on
   the guider for the one call. At 1.0 the guider runs one pass per step, not two.
3. Progress: it has no ``callback_on_step_end``; its loop calls ``progress_bar(...).update()`` after
   every step, which ``daemon.engine.step_progress`` reports to ``step_callback``.
"""

from __future__ import annotations

from typing import Any

from diffusers import HunyuanVideo15ImageToVideoPipeline
from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

from daemon.engine.step_progress import StepProgressMixin


class _RequestedSize(HunyuanVideo15ImageProcessor):
    """The pipeline's image processor, answering its "which size?" with the size asked for."""

    size: tuple[int, int] | None = None  # (height, width) for the current call; None: upstream's pick

    def calculate_default_height_width(self, height: int, width: int, target_size: int) -> tuple[int, int]:
        if self.size is None:
            return super().calculate_default_height_width(height, width, target_size)
        return self.size


class DaemonHunyuanVideo15ImageToVideoPipeline(StepProgressMixin, HunyuanVideo15ImageToVideoPipeline):
    """Loads any HunyuanVideo 1.5 image-to-video folder (``from_pretrained`` is inherited unchanged)."""

    def __call__(  # type: ignore[override]
        self,
        *args: Any,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        **kwargs: Any,
    ) -> Any:
        processor, guider = self.video_processor, self.guider
        if not isinstance(processor, _RequestedSize):  # set in upstream's __init__, as upstream does
            processor = self.video_processor = _RequestedSize(
                vae_scale_factor=self.vae_scale_factor_spatial, do_resize=False, do_convert_rgb=True
            )
        was = guider.guidance_scale
        processor.size = (height, width) if height is not None and width is not None else None
        if guidance_scale is not None:
            guider.guidance_scale = guidance_scale
        try:
            return super().__call__(*args, **kwargs)
        finally:
            processor.size = None
            guider.guidance_scale = was
