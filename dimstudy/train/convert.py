"""Checkpoints of the public DiM code (its `nnet.pth` / `nnet_ema.pth`) to dimstudy checkpoints, and back.

The public format is written down, as facts, in the project notes (`dim-checkpoint-format.md`); every line
here is dimstudy's own. The mapping is exact and strict:

    additional_embed                                  <-> pos_embed            (a positional table on both
    pos_embed.proj.*                                  <-> patch_embed.proj.*    sides; the public `pos_embed`
                                                                                is the patch conv)
    transformer_blocks.{i}.scale_shift_table          <-> blocks.{i}.ada_table
    transformer_blocks.{i}.norm1.norm.weight          <-> blocks.{i}.norm.weight
    transformer_blocks.{i}.attn1.*                    <-> blocks.{i}.mixer.*
    transformer_blocks.{i}.skip_linear.*              <-> blocks.{i}.skip_linear.*   (d <= 512)
    transformer_blocks.{i}.skip_linear.{0,1}.*         -> blocks.{i}.skip_linear.*   (d > 512: two summed
                                                          Linear(d, d): weights concatenated [stream | skip],
                                                          biases summed; back: [:, :d], [:, d:], (b, 0))
    norm_out.norm.weight                              <-> head.norm.weight
    proj_out_1.* / proj_out_2.*                       <-> head.ada.1.* / head.linear.*
    adaln_single.emb.timestep_embedder.linear_{1,2}.* <-> t_embed.mlp.{0,2}.*
    adaln_single.emb.class_embedder.embedding_table.weight <-> ada_label_emb.weight
    adaln_single.linear.*                             <-> ada_proj.1.*
    label_emb.weight                                  <-> label_emb.weight
    a4m_adapter.pad_token_dec_split                   <-> separators
    a4m_adapter.pad_token (1, d, 3)                   <-> pad_tokens (3, d), transposed
    a4m_adapter.{first,last}_smoother.*               <-> conv_in.* / conv_out.*

An unconditional dimstudy model keeps only the null row of each class table; the public CIFAR model has 11
(null index 10), and only row 10 is ever used: import takes it, export writes it back at index K with the
other K rows zero. Any key that is left over or missing, or a shape that differs, stops the conversion with
one line that lists them; nothing is loaded with strict=False.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn

from dimstudy.flops import build_on_meta
from dimstudy.models.registry import list_models
from dimstudy.results import environment
from dimstudy.train.config import TrainConfig
from dimstudy.train.files import load_file, save_checkpoint

FORMATS = ("dim-public", "dimstudy")
PUBLIC_EMA_FILE, PUBLIC_RAW_FILE = "nnet_ema.pth", "nnet.pth"
FUSED_SKIP_MAX_DIM = 512  # the public code fuses a long skip with one Linear(2d, d) up to this width
PUBLIC_CIFAR_CLASSES = 10  # cifar10_S_DiM builds its tables with K = 10 rows + the null row, trained unconditionally

# (public, dimstudy) key patterns: {i} is a block index, {rest} the remainder of the key.
RENAMES = [
    ("additional_embed", "pos_embed"),
    ("pos_embed.proj.{rest}", "patch_embed.proj.{rest}"),
    ("transformer_blocks.{i}.scale_shift_table", "blocks.{i}.ada_table"),
    ("transformer_blocks.{i}.norm1.norm.weight", "blocks.{i}.norm.weight"),
    ("transformer_blocks.{i}.attn1.{rest}", "blocks.{i}.mixer.{rest}"),
    ("transformer_blocks.{i}.skip_linear.{rest}", "blocks.{i}.skip_linear.{rest}"),
    ("norm_out.norm.weight", "head.norm.weight"),
    ("proj_out_1.{rest}", "head.ada.1.{rest}"),
    ("proj_out_2.{rest}", "head.linear.{rest}"),
    ("adaln_single.emb.timestep_embedder.linear_1.{rest}", "t_embed.mlp.0.{rest}"),
    ("adaln_single.emb.timestep_embedder.linear_2.{rest}", "t_embed.mlp.2.{rest}"),
    ("adaln_single.emb.class_embedder.embedding_table.weight", "ada_label_emb.weight"),
    ("adaln_single.linear.{rest}", "ada_proj.1.{rest}"),
    ("label_emb.weight", "label_emb.weight"),
    ("a4m_adapter.pad_token_dec_split", "separators"),
    ("a4m_adapter.pad_token", "pad_tokens"),
    ("a4m_adapter.first_smoother.{rest}", "conv_in.{rest}"),
    ("a4m_adapter.last_smoother.{rest}", "conv_out.{rest}"),
]
CLASS_TABLES = ("label_emb.weight", "ada_label_emb.weight")
_SPLIT_SKIP = re.compile(r"transformer_blocks\.(\d+)\.skip_linear\.([01])\.(weight|bias)$")


class ConversionError(ValueError):
    """A state dict that does not map onto the network; the message lists the keys."""


def _regex(pattern: str) -> re.Pattern:
    parts = re.split(r"(\{i\}|\{rest\})", pattern)
    body = "".join({"{i}": r"(?P<i>\d+)", "{rest}": r"(?P<rest>.+)"}.get(p, re.escape(p)) for p in parts)
    return re.compile(body + "$")


_TO_OURS = [(_regex(pub), ours) for pub, ours in RENAMES]
_TO_PUBLIC = [(_regex(ours), pub) for pub, ours in RENAMES]


def _rename(key: str, rules) -> str | None:
    for rx, target in rules:
        if m := rx.match(key):
            return target.format(**m.groupdict())
    return None


def collapse_keys(keys) -> str:
    """Keys with their block indices folded into ranges: 'blocks.{0..48}.mixer.D, pos_embed'."""
    groups: dict[str, list[int]] = {}
    for k in keys:
        m = re.search(r"\.(\d+)\.", k)
        pattern = k if m is None else k[: m.start()] + ".{}." + k[m.end():]
        groups.setdefault(pattern, []).append(int(m.group(1)) if m else -1)
    out = []
    for pattern, idx in groups.items():
        if "{}" not in pattern:
            out.append(pattern)
            continue
        idx = sorted(idx)
        runs = "..".join(map(str, (idx[0], idx[-1]))) if idx == list(range(idx[0], idx[-1] + 1)) else ",".join(map(str, idx))
        out.append(pattern.replace("{}", "{" + runs + "}" if len(idx) > 1 else str(idx[0])))
    return ", ".join(out)


def mismatch_message(what: str, unknown=(), missing=(), shapes=()) -> str:
    """One line naming everything that does not fit: unknown keys, missing keys, shape differences."""
    parts = [f"{label}: {text}" for label, text in (
        ("unknown keys", collapse_keys(unknown)), ("missing keys", collapse_keys(missing)),
        ("shapes (file vs model)", ", ".join(shapes))) if text]
    return f"{what}: " + "; ".join(parts)


# -- reading public files -------------------------------------------------------------------------------------
def read_public_state_dict(path: str | Path, ema: bool = True) -> tuple[dict, Path]:
    """(plain public state dict, the file it came from) from a .pth file or a `<step>.ckpt/` directory.

    A directory gives its nnet_ema.pth (ema=True, what the public evaluation loads) or nnet.pth. A leading
    `module.` (accelerate under DDP) is stripped; a DeepSpeed `mp_rank_00_model_states.pt` gives its 'module'.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / (PUBLIC_EMA_FILE if ema else PUBLIC_RAW_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"no public DiM checkpoint at {path} (expected {PUBLIC_EMA_FILE} or {PUBLIC_RAW_FILE})")

    sd = load_file(path)
    if isinstance(sd, dict) and isinstance(sd.get("module"), dict):  # DeepSpeed model states
        sd = sd["module"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ConversionError(f"{path} is not a state dict of tensors (a dimstudy checkpoint? use --from dimstudy)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, path


def public_model_kwargs(sd: dict) -> dict:
    """Sizes a public state dict fixes: img_size, in_chans, dim and patch from its tables' shapes."""
    for key in ("additional_embed", "pos_embed.proj.weight"):
        if key not in sd:
            raise ConversionError(f"not a public DiM state dict: no {key!r} (keys: {collapse_keys(list(sd)[:6])}, ...)")
    rows, dim = sd["additional_embed"].shape[1:]
    side, patch = math.isqrt(rows - 2), sd["pos_embed.proj.weight"].shape[-1]
    return {"img_size": side * patch, "in_chans": sd["pos_embed.proj.weight"].shape[1], "dim": dim, "patch_size": patch}


# -- the two directions ---------------------------------------------------------------------------------------
def public_to_dimstudy(sd: dict, model: nn.Module, source: str = "state dict") -> dict:
    """The public state dict `sd` as `model`'s state dict, exactly; ConversionError naming what does not fit."""
    want = model.state_dict()
    out, unknown = {}, []
    for key, w in sd.items():
        if m := _SPLIT_SKIP.match(key):  # d > 512: two summed Linear(d, d) -> one Linear(2d, d) on [stream, skip]
            i, half, kind = m.groups()
            pair = [sd.get(f"transformer_blocks.{i}.skip_linear.{j}.{kind}") for j in "01"]
            if any(p is None for p in pair):
                unknown.append(key)  # half of a pair
            elif half == "0":
                out[f"blocks.{i}.skip_linear.{kind}"] = torch.cat(pair, dim=1) if kind == "weight" else pair[0] + pair[1]
            continue
        ours = _rename(key, _TO_OURS)
        if ours is None:
            unknown.append(key)
            continue
        if ours == "pad_tokens":  # (1, d, 3) -> (3, d): row j is p_j
            w = w[0].t()
        if ours in CLASS_TABLES and ours in want and want[ours].shape[0] == 1 and w.shape[0] > 1:
            w = w[-1:]  # an unconditional model keeps only the null class, the public table's last row
        out[ours] = w.contiguous()
    missing = [k for k in want if k not in out]
    unknown += [k for k in out if k not in want]
    shapes = [f"{k} {tuple(out[k].shape)} vs {tuple(want[k].shape)}" for k in want if k in out and out[k].shape != want[k].shape]
    if unknown or missing or shapes:
        name = getattr(model, "registry_name", type(model).__name__)
        raise ConversionError(mismatch_message(f"{source} does not map onto {name}", unknown, missing, shapes))
    return {k: out[k] for k in want}  # in the model's order


def dimstudy_to_public(sd: dict, model: nn.Module, public_classes: int | None = None) -> dict:
    """`model`'s state dict `sd` in the public layout (the inverse of `public_to_dimstudy`).

    public_classes: K of the public tables for an unconditional model (default 10, the public CIFAR config);
    its null row goes to index K, the K class rows are zero.
    """
    cfg = getattr(model, "config", {})
    needs = {"head_cond": "sinusoid", "ada_class_table": True, "adaln": True, "padding_tokens": True}
    off = [f"{k}={cfg.get(k)!r}" for k, v in needs.items() if cfg.get(k) != v]
    if off:
        raise ConversionError(f"only DiM with the public conditioning and pad tokens exports to dim-public; "
                              f"this model has {', '.join(off)}")
    d = model.dim
    k_pub = model.num_classes or (PUBLIC_CIFAR_CLASSES if public_classes is None else public_classes)
    out = {}
    for key, w in sd.items():
        pub = _rename(key, _TO_PUBLIC)
        if pub is None:
            raise ConversionError(f"no public name for {key!r}")
        if key == "pad_tokens":
            w = w.t()[None]  # (3, d) -> (1, d, 3)
        elif key in CLASS_TABLES and w.shape[0] == 1 and k_pub:
            w = torch.cat([w.new_zeros(k_pub, d), w])  # rows 0..K-1 unused, row K the null class
        elif ".skip_linear." in key and d > FUSED_SKIP_MAX_DIM:
            stem, kind = pub.rsplit(".", 1)
            halves = (w[:, :d], w[:, d:]) if kind == "weight" else (w, torch.zeros_like(w))
            for j, h in enumerate(halves):
                out[f"{stem}.{j}.{kind}"] = h.contiguous()
            continue
        out[pub] = w.contiguous()
    return out


# -- files ----------------------------------------------------------------------------------------------------
def infer_preset(sd: dict) -> str:
    """The registered DiM preset with a public state dict's width and depth (dim_s_2, dim_l_2, dim_h_2)."""
    dim = public_model_kwargs(sd)["dim"]
    depth = 1 + max((int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")), default=-1)
    for name in list_models("dim_*"):
        m = build_on_meta(name)
        if (m.dim, m.depth) == (dim, depth):
            return name
    raise ConversionError(f"no DiM preset has width {dim} and {depth} blocks; convert it with --model NAME and "
                          f"model options (dimstudy convert --help)")


def public_checkpoint(path: str | Path, model: str | None = None, *, ema: bool = True, pad_layout: str | None = None,
                      **model_kwargs) -> dict:
    """A public DiM checkpoint as an in-memory dimstudy checkpoint dict, the form `read_checkpoint` returns.

    path: a .pth state dict, or a `<step>.ckpt/` directory: its nnet_ema.pth becomes the EMA weights and its
    nnet.pth (when there) the raw ones; a single file's weights fill both, and `converted_from` says which
    they are. model: a registered preset (default: the one of the file's width and depth); the network is
    `create_model(model, img_size, in_chans from the file, pad_layout, **model_kwargs)`. pad_layout=None takes
    the public config's: cyclic for a 64x64 latent (the 512 px fine-tune's rho_pad), else lateral.
    """
    path = Path(path).expanduser()
    sd, src = read_public_state_dict(path, ema)
    raw_file = path / PUBLIC_RAW_FILE if path.is_dir() else None
    model = model or infer_preset(sd)
    sizes = public_model_kwargs(sd)
    latent = sizes["in_chans"] == 4
    if pad_layout is None:
        pad_layout = "cyclic" if latent and sizes["img_size"] == 64 else "lateral"
    kwargs = {"img_size": sizes["img_size"], "in_chans": sizes["in_chans"], "pad_layout": pad_layout, **model_kwargs}
    net = build_on_meta(model, **kwargs)  # names and shapes only
    weights = public_to_dimstudy(sd, net, source=str(src))
    raw = weights
    if raw_file is not None and raw_file.is_file() and raw_file != src:
        raw = public_to_dimstudy(read_public_state_dict(raw_file)[0], net, source=str(raw_file))
    config = TrainConfig(model=model, model_kwargs={k: v for k, v in kwargs.items() if k not in ("img_size", "in_chans")},
                         dataset="latents" if latent else "cifar10", resolution=sizes["img_size"],
                         class_cond=net.num_classes > 0,
                         schedule="ddpm_scaled_linear" if latent else "vpsde")  # the public runs' schedules
    which = {PUBLIC_EMA_FILE: "ema", PUBLIC_RAW_FILE: "raw"}.get(src.name, "unknown")
    return {
        "model": raw, "ema": {"decay": 0.9999, "warmup": False, "module": weights}, "step": 0,
        "model_args": {"name": model, "kwargs": {**kwargs, "num_classes": net.num_classes}},
        "config": config.to_dict(),
        "converted_from": {"format": "dim-public", "file": str(src), "weights": which,
                           "raw_file": str(raw_file) if raw is not weights else None},
    }


def import_public(path: str | Path, model: str | None, out: str | Path, **kwargs) -> dict:
    """Write `public_checkpoint(path, model, **kwargs)` as a dimstudy checkpoint file; returns a summary."""
    state = public_checkpoint(path, model, **kwargs)
    state["environment"] = json.loads(json.dumps(environment(torch.device("cpu"))))  # plain types: weights_only loads
    state["converted_from"]["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    save_checkpoint(state, out)
    w = state["ema"]["module"]
    return {"out": str(out), "model": state["model_args"]["name"], "params": sum(v.numel() for v in w.values()),
            "keys": len(w), "pad_layout": state["model_args"]["kwargs"]["pad_layout"],
            "schedule": state["config"]["schedule"], "source": state["converted_from"]["file"]}


def export_public(model: nn.Module, out: str | Path, *, public_classes: int | None = None) -> dict:
    """Write a network's weights (`load_checkpoint`'s, EMA by default) as a public DiM state dict (`nnet_ema.pth`).

    It takes the network, not the checkpoint: `read_checkpoint` reads public files through this module."""
    sd = dimstudy_to_public(model.state_dict(), model, public_classes)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, out)
    return {"out": str(out), "keys": len(sd), "params": sum(w.numel() for w in sd.values())}


def is_public_checkpoint(path: str | Path) -> bool:
    """True for a public DiM .pth file or `<step>.ckpt/` directory; False for dimstudy checkpoints and run dirs."""
    path = Path(path)
    if path.is_dir():
        return not (path / "latest.pt").exists() and any((path / f).is_file() for f in (PUBLIC_EMA_FILE, PUBLIC_RAW_FILE))
    if not path.is_file():
        return False

    return is_public_state_dict(load_file(path))  # memory-mapped: no tensor is read


def is_public_state_dict(obj) -> bool:
    """True for what a public DiM .pth file holds (also DeepSpeed's {'module': ...} and accelerate's `module.`)."""
    sd = obj.get("module", obj) if isinstance(obj, dict) else obj
    return isinstance(sd, dict) and any(k in sd for k in ("additional_embed", "module.additional_embed"))
