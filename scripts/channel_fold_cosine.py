"""How far the ``sum`` channel fold is from copying gray to RGB (``repeat``) for a padded CNN stem.

For a patch embedding the two are the same computation. A CNN's first convolution pads its input with zeros:
after ``sum`` the zero is a black pixel, after ``repeat`` (normalised RGB) it is the mean colour, so the
border differs. This prints the cosine similarity of the two embeddings of the same random-init backbone
(the same weights: ``sum`` folds them) on real images, per input size and seed.

    MEDADAPT_DATA=../shared/data/medmnist python scripts/channel_fold_cosine.py --sizes 28 224 --seeds 0 1 2
"""

from __future__ import annotations

import argparse

import torch

import medadapt
from medadapt.data.transforms import Preprocess


def cosine(backbone: str, images: torch.Tensor, size: int, seed: int) -> float:
    """Mean cosine similarity between the ``sum`` and ``repeat`` embeddings of ``images`` (N, 1, H, W)."""
    out = {}
    for mode in ("sum", "repeat"):
        torch.manual_seed(seed)  # the same random weights for both modes
        bb = medadapt.create_backbone(
            backbone, pretrained=False, img_size=size, data_chans=1, channel_mode=mode
        )
        prep = Preprocess.for_backbone(bb.spec, size)  # as every command builds it (bicubic resize)
        with torch.inference_mode():
            out[mode] = bb.eval().forward_features(prep(images)).embedding
    return torch.nn.functional.cosine_similarity(out["sum"], out["repeat"]).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="medmnist:breastmnist")
    parser.add_argument("--split", default="test")
    parser.add_argument("--backbone", default="timm:resnet18")
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 224])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    ds = medadapt.load_dataset(args.dataset, args.split)
    images = torch.stack([ds.image(i) for i in range(len(ds))])
    print(f"{args.backbone}, random init, {len(ds)} {args.dataset} {args.split} images: cosine(sum, repeat)")
    print("| input px | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---" * (len(args.seeds) + 2) + "|")
    for size in args.sizes:
        values = [cosine(args.backbone, images, size, s) for s in args.seeds]
        print(
            f"| {size} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {sum(values) / len(values):.3f} |"
        )


if __name__ == "__main__":
    main()
