"""What the diffusion U-Net should predict: ``v`` or the noise ``eps``, side by side in one run.

Trains two base models (tiny, 64x64, the photo corpus) for the same steps from the same seed, one
per prediction type, then fills the inpainting masks of Table 8's evaluation set (the views of
``--val``) with DDIM and prints PSNR/SSIM inside and outside the masks (raw output, as Table 8).

    python benchmarks/diffusion_prediction.py [--steps 150] [--train ../shared/photos/train] [--val ../shared/photos/val]

docs/diffusion.md quotes its output; the models go to a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from instruct_ipt.ablation.table8 import DiffusionSettings, evaluation_set, generate, pixel_figures
from instruct_ipt.diffusion.model import MaskedDiffusion
from instruct_ipt.diffusion.train import DiffusionTrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--train", default="../shared/photos/train")
    ap.add_argument("--val", default="../shared/photos/val")
    args = ap.parse_args()
    settings = DiffusionSettings(size="tiny", budget_minutes=None, steps=args.steps, train=(args.train,), val=args.val)
    views, masks = evaluation_set(settings)
    print(f"{args.steps} steps each, batch 16, seed 0; {len(views)} inpainting cases of {args.val}, DDIM "
          f"{settings.sample_steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        for prediction in ("v_prediction", "epsilon"):
            out = Path(tmp) / prediction
            t0 = time.perf_counter()
            cfg = DiffusionTrainConfig(out=str(out), model={"prediction_type": prediction}, photos=(args.train,),
                                       steps=args.steps, checkpoint_every=args.steps)
            train(cfg, progress=False, say=lambda _: None)
            model = MaskedDiffusion.from_pretrained(out / "model")
            figures = pixel_figures(generate(model, views, masks["inpaint"], "inpaint", settings, 0), views,
                                    masks["inpaint"])
            print(f"{prediction:>13}: PSNR in {figures['psnr_in']:.2f} dB, out {figures['psnr_out']:.2f} dB; "
                  f"SSIM in {figures['ssim_in']:.3f}, out {figures['ssim_out']:.3f} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
