"""Benchmark: dimstudy's Triton selective scan against mamba-ssm's CUDA kernel, in one process, with floors.

    python experiments/bench_scan.py --out results/scan-bench          # the issue's three shapes
    python experiments/bench_scan.py --sweep                            # also time every (BD, warps) config

Shapes: DiM-H/2 at 1024 px (d_inner 3072, d_state 16, L 4496) forward at batch 1 and 8, and DiM-S/2
training at 32 px (d_inner 1024, L 368, batch 128) forward and forward + backward. "fwd" runs with no input
needing a gradient (inference: the kernel saves no states); "fwd+bwd" is a training step's scan, whose forward
saves the states every CHUNK steps for the backward. bf16 inputs, float32
A, D and delta_bias, softplus on, z and D present: what the mixer passes. mamba-ssm reads (b, d, l) with
stride 1 along l; the Triton kernel reads the mixer's (b, l, d) projections through a transpose.

Floors, printed beside each time: memory (u, delta, z, B, C read once, y written once; backward: those, the
output gradient and the four input gradients) over the copy bandwidth measured here, and the exp2 count over
the special-function units' rate (16 per clock per multiprocessor at the boost clock, a datasheet figure).
"""

from __future__ import annotations

import argparse
import os

import torch
from triton.testing import do_bench

import dimstudy.ops.triton_scan as ts
from dimstudy.ops.selective_scan import selective_scan_fn as mamba_scan
from dimstudy.results import append_row, environment

SHAPES = {  # name: (batch, d_inner, d_state, L, with backward)
    "dim_h_2-1024px-b1": (1, 3072, 16, 4496, False),
    "dim_h_2-1024px-b8": (8, 3072, 16, 4496, False),
    "dim_s_2-32px-train-b128": (128, 1024, 16, 368, True),
}
BOOST_GHZ = 1.98  # H100/H200 SXM boost clock; the exp floor is a datasheet estimate


def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy, read plus write."""
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)


def make_inputs(b, d, n, length, layout, grad=False):
    g = torch.Generator(device="cuda").manual_seed(0)

    def act(scale=1.0):  # (b, d, l): bf16, l-contiguous ("bdl") or a view of (b, l, d) memory ("bld")
        x = torch.randn(b, length, d, device="cuda", generator=g) * scale
        x = x.to(torch.bfloat16).transpose(1, 2)
        return x.contiguous() if layout == "bdl" else x

    def bc():
        x = torch.randn(b, length, n, device="cuda", generator=g).to(torch.bfloat16).transpose(1, 2)
        return x.contiguous() if layout == "bdl" else x

    u, delta, z = act(), act(0.5), act()
    A = -torch.rand(d, n, device="cuda", generator=g) * 4 - 0.1
    D, bias = torch.randn(d, device="cuda", generator=g), torch.randn(d, device="cuda", generator=g) * 0.3 - 4
    xs = [u, delta, A, bc(), bc(), D, z, bias]
    if grad:
        xs = [x.detach().requires_grad_() for x in xs]
    return xs


def run_scan(fn, xs):
    u, delta, A, B, C, D, z, bias = xs
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def bench_shape(name, b, d, n, length, backward, bw, sweep, want=("fwd", "fwd+bwd"), depths=(), caps=(), variants=()):
    rows = []
    ex_floor_ms = b * d * n * length / (torch.cuda.get_device_properties(0).multi_processor_count * 16 * BOOST_GHZ * 1e9) * 1e3
    io = 2 * b * length * (3 * d + 2 * n) + 2 * b * length * d  # bf16: u, delta, z, B, C in, y out
    mem_floor_ms = io / bw * 1e3
    modes = [m for m in (["fwd", "fwd+bwd"] if backward else ["fwd"]) if m in want]
    for mode in modes:
        grad = mode == "fwd+bwd"
        xm, xt = make_inputs(b, d, n, length, "bdl", grad), make_inputs(b, d, n, length, "bld", grad)
        gy = torch.randn(b, d, length, device="cuda").to(torch.bfloat16)

        def step(fn, xs, grad=grad, gy=gy):
            y = run_scan(fn, xs)
            if grad:
                y.backward(gy)
            return y

        # agreement on the same values (the layouts differ, the numbers do not)
        ym, yt = step(mamba_scan, xm), step(ts.selective_scan_triton, xt)
        err = {"y": rel(yt, ym)}
        if grad:
            for k, a_, b_ in zip("u delta A B C D z bias".split(), xt, xm):
                err[k] = rel(a_.grad, b_.grad)
                a_.grad = b_.grad = None
        floor = (2 if grad else 1) * ex_floor_ms  # backward recomputes the exps once more
        mem = mem_floor_ms * (3 if grad else 1)
        t_m = do_bench(lambda xs=xm: step(mamba_scan, xs), warmup=25, rep=200, return_mode="median")
        # Each config is a change to the default one: (BD, warps), sequence parts, the backward's prefetch, the
        # forward's depth, a register cap (of the backward when timing fwd+bwd, else of the forward), and the
        # backward's variant (chunk between saved states, stored decays). None: the launcher decides.
        default = {"block": None, "parts": None, "prefetch": ts.BWD_PREFETCH, "depth": ts.FWD_DEPTH, "cap": None,
                   "chunk": ts.CHUNK, "decay": ts.STORE_DECAY}
        changes = [{}] + [{"depth": dp} for dp in depths] + [{"cap": cap} for cap in caps]
        if grad:
            changes += [{"chunk": ck, "decay": dc} for ck, dc in variants]
        if sweep and grad:  # the forward keeps its default; (BD, warps) and prefetching apply to the backward
            changes += [{"block": (bd, w), "prefetch": pf} for bd in (16, 32, 64) for w in (1, 2) for pf in (True, False)]
        elif sweep:
            changes += [{"block": (bd, w), "parts": p} for bd in (32, 64) for w in (1, 2) for p in (1, 16, 32, 64)]
        tunables = ("BLOCK_OVERRIDE", "PARTS_OVERRIDE", "BWD_PREFETCH", "FWD_DEPTH", "FWD_MAXNREG", "BWD_MAXNREG",
                    "CHUNK", "STORE_DECAY")
        before = {k: getattr(ts, k) for k in tunables}
        for change in changes:
            c = {**default, **change}
            cfg, parts, prefetch, depth, cap, chunk_bwd, decay = c.values()
            ts.BLOCK_OVERRIDE, ts.PARTS_OVERRIDE, ts.BWD_PREFETCH, ts.FWD_DEPTH = cfg, parts, prefetch, depth
            ts.CHUNK, ts.STORE_DECAY = chunk_bwd, decay
            setattr(ts, "BWD_MAXNREG" if grad else "FWD_MAXNREG", cap)
            if grad and cfg is not None:  # time the backward's config with the default forward
                os.environ["DIMSTUDY_SCAN_BLOCK_BWD"] = f"{cfg[0]},{cfg[1]}"
                ts.BLOCK_OVERRIDE = None
            try:
                t_t = do_bench(lambda xs=xt: step(ts.selective_scan_triton, xs), warmup=25, rep=200, return_mode="median")
            except Exception as e:  # noqa: BLE001 - a config that does not compile is a row, not a crash
                print(f"{name} {mode} cfg {change}: {type(e).__name__}: {str(e)[:200]}")
                continue
            finally:
                for k, v in before.items():
                    setattr(ts, k, v)
                os.environ.pop("DIMSTUDY_SCAN_BLOCK_BWD", None)
            cfg_used = cfg or ts._block_config(b, d, torch.device("cuda"), backward=grad)
            chunk = chunk_bwd if grad else ts.WALK_CHUNK  # with no gradient to come, nothing is saved
            n_ck = ts._chunking(length, chunk)[0]
            parts_used = parts or ts._parts(b, d, cfg_used[0], n_ck, torch.device("cuda"))
            fwd_depth = depth or ts._fwd_depth(b, d, cfg_used[0], torch.device("cuda"))
            row = {"shape": name, "mode": mode, "batch": b, "d_inner": d, "d_state": n, "seqlen": length,
                   "dtype": "bf16", "block_d": cfg_used[0], "num_warps": cfg_used[1], "parts": parts_used, "default_config": not change,
                   "maxnreg": cap, "store_decay": decay if grad else None,
                   "bwd_prefetch": prefetch if grad else None, "fwd_depth": fwd_depth,
                   "chunk": chunk, "saves_states": grad, "scatter_sums": ts.SCATTER_SUMS, "ms_mamba_ssm": t_m, "ms_triton": t_t, "speedup": t_m / t_t,
                   "floor_exp_ms": floor, "floor_mem_ms": mem, "triton_over_floor": t_t / max(floor, mem),
                   "rel_err_vs_mamba_ssm": err, "copy_tb_s": bw / 1e12, "seed": 0}
            rows.append(row)
            print(f"{name:26s} {mode:8s} BD {cfg_used[0]:3d} w {cfg_used[1]} p {parts_used:2d} pf {int(prefetch)} fd {fwd_depth} "
                  f"ck {chunk} sc {int(ts.SCATTER_SUMS)} reg {cap or '-'} sd {int(decay)} | mamba-ssm {t_m:8.3f} ms | triton "
                  f"{t_t:8.3f} ms | x{t_m / t_t:5.2f} | floor exp {floor:.3f} mem {mem:.3f} ms | "
                  f"{t_t / max(floor, mem):5.1f}x floor | err {max(err.values()):.1e}", flush=True)
    return rows


def summarize(path: str) -> str:
    """Markdown: per commit and shape, the default config's row and the best of the sweep (if one ran)."""
    import json

    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    out = ["| commit | shape | mode | config (BD, warps, parts[, chunk]) | mamba-ssm ms | triton ms | speed-up | over floor |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    seen = []
    for r in rows:
        key = (r["git_sha"], r["shape"], r["mode"])
        if key not in seen:
            seen.append(key)
    for sha, shape, mode in seen:
        group = [r for r in rows if (r["git_sha"], r["shape"], r["mode"]) == (sha, shape, mode)]
        picks = [("default", next((r for r in group if r.get("default_config", True)), group[0]))]
        best = min(group, key=lambda r: r["ms_triton"])
        if len(group) > 1 and best is not picks[0][1]:
            picks.append(("best of sweep", best))
        for label, r in picks:
            cfg = f"{r['block_d']}, {r['num_warps']}, {r.get('parts', 1)}" + (" (no prefetch)" if r.get("bwd_prefetch") is False else "")
            if "chunk" in r:  # rows that name the chunk between saved states (and, from 001b9c01da3f, the sums)
                cfg += f", chunk {r['chunk']}" + ("" if r.get("scatter_sums", True) else ", per-n sums")
            if r.get("fwd_depth", 1) != 1:
                cfg += f", {r['fwd_depth']} steps in flight"
            if r.get("maxnreg"):
                cfg += f", at most {r['maxnreg']} registers"
            if r.get("store_decay"):
                cfg += ", stored decays"
            out.append(f"| {sha} | {shape} | {mode} | {label}: {cfg} | {r['ms_mamba_ssm']:.3f} | {r['ms_triton']:.3f} | "
                       f"{r['speedup']:.2f}x | {r['triton_over_floor']:.1f}x |")
    return "\n".join(out)


def parse_variants(text: str) -> list[tuple[int, bool]]:
    """"8,16:decay" -> [(8, False), (16, True)]."""
    out = []
    for item in filter(None, text.split(",")):
        chunk, _, flag = item.partition(":")
        if not chunk.isdigit() or flag not in ("", "decay"):
            raise SystemExit(f"--bwd-variants: {item!r} is not CHUNK or CHUNK:decay (e.g. 8 or 16:decay)")
        out.append((int(chunk), flag == "decay"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--sweep", action="store_true", help="time every (BD, warps) config too")
    ap.add_argument("--modes", default="fwd,fwd+bwd", help="which of fwd, fwd+bwd to time")
    ap.add_argument("--fwd-depths", default="", help="also time the default config at these forward prefetch depths (steps in flight), e.g. 1,2,3")
    ap.add_argument("--maxnreg", default="", help="also time the default config with its kernel capped at these registers a lane (the backward's in fwd+bwd), e.g. 128,168")
    ap.add_argument("--bwd-variants", default="", help="also time fwd+bwd with these backward variants, CHUNK or CHUNK:decay (steps between saved states; decay: the adjoint reads stored decays), e.g. 8,8:decay,16:decay")
    ap.add_argument("--out", default=None, help="append rows to OUT/scan_bench.jsonl")
    ap.add_argument("--summary", metavar="JSONL", help="print the Markdown summary of a rows file and exit")
    args = ap.parse_args()
    if args.summary:
        print(summarize(args.summary))
        return
    if mamba_scan is None:
        raise SystemExit("mamba-ssm's kernel is needed as the baseline: pip install --no-build-isolation mamba-ssm")
    bw = copy_bandwidth()
    env = environment("cuda")
    print(f"{env['gpu']}, torch {env['torch']}, copy {bw / 1e12:.2f} TB/s")
    for name in args.shapes.split(","):
        b, d, n, length, backward = SHAPES[name]
        for row in bench_shape(name, b, d, n, length, backward, bw, args.sweep, args.modes.split(","),
                               [int(v) for v in args.fwd_depths.split(",") if v],
                               [int(v) for v in args.maxnreg.split(",") if v], parse_variants(args.bwd_variants)):
            if args.out:
                append_row("scan_bench", {**row, "kernels": "triton vs mamba-ssm selective_scan_fn", **env}, args.out)


if __name__ == "__main__":
    main()
