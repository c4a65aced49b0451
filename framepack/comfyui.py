"""Find FramePack's five weight files in a ComfyUI models folder, by their usual names.

ComfyUI keeps one file per component in sub-folders named by kind; the names people have
vary in a suffix (``_bf16``, ``_fp16``, ``_fp8_e4m3fn``…), so each component is looked
for by a glob, case-insensitive, in its folders and their sub-folders:

=================  =====================================  ==========================================
component          folders                                names
=================  =====================================  ==========================================
transformer        ``diffusion_models/``, ``unet/``       ``FramePackI2V_HY*`` (inverted mode),
                                                          ``FramePack_F1_I2V_HY*`` (forward mode)
text_encoder       ``text_encoders/``, ``clip/``          ``llava_llama3*``
text_encoder_2     ``text_encoders/``, ``clip/``          ``clip_l*``
image_encoder      ``clip_vision/``                       ``sigclip_vision_patch14_384*``, ``siglip_vision_patch14_384*``
vae                ``vae/``                               ``hunyuan_video_vae*``
=================  =====================================  ==========================================

A missing component is named with what was looked for where; two candidates are an error
naming both (a file passed explicitly wins over the search).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import CheckpointError

Mode = Literal["inverted", "forward"]
COMPONENTS = ("transformer", "text_encoder", "text_encoder_2", "image_encoder", "vae")
FILE_FLAGS = {  # the command's flag naming each component's file
    "transformer": "--transformer-file",
    "text_encoder": "--text-encoder-file",
    "text_encoder_2": "--clip-file",
    "image_encoder": "--image-encoder-file",
    "vae": "--vae-file",
}


@dataclass(frozen=True)
class Wanted:
    """What a component's file is called and where ComfyUI keeps it."""

    what: str
    folders: tuple[str, ...]
    patterns: tuple[str, ...]


TRANSFORMER_FOLDERS = ("diffusion_models", "unet")
TRANSFORMER_PATTERNS: dict[Mode, tuple[str, ...]] = {
    "inverted": ("FramePackI2V_HY*.safetensors",),
    "forward": ("FramePack_F1_I2V_HY*.safetensors",),
}
WANTED = {
    "transformer": Wanted(
        "FramePack transformer", TRANSFORMER_FOLDERS, TRANSFORMER_PATTERNS["inverted"] + TRANSFORMER_PATTERNS["forward"]
    ),
    "text_encoder": Wanted("Llama text encoder", ("text_encoders", "clip"), ("llava_llama3*.safetensors",)),
    "text_encoder_2": Wanted("CLIP text encoder", ("text_encoders", "clip"), ("clip_l*.safetensors",)),
    "image_encoder": Wanted(
        "SigLIP image encoder",
        ("clip_vision",),
        ("sigclip_vision_patch14_384*.safetensors", "siglip_vision_patch14_384*.safetensors"),
    ),
    "vae": Wanted("HunyuanVideo VAE", ("vae",), ("hunyuan_video_vae*.safetensors",)),
}


def transformer_mode(path: str | os.PathLike[str]) -> Mode | None:
    """The mode a transformer file's name says it was trained for (None: the name does not say)."""
    name = Path(path).name.lower()
    for mode, patterns in TRANSFORMER_PATTERNS.items():
        if any(fnmatch.fnmatchcase(name, p.lower()) for p in patterns):
            return mode
    return None


def find_comfyui_files(
    models_dir: str | os.PathLike[str],
    *,
    mode: Mode | None = None,
    given: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> dict[str, Path]:
    """Component -> file: those ``given``, the others found in ``models_dir``.

    ``mode`` picks the transformer: the I2V model for "inverted", F1 for "forward"; None
    takes the only one there is.
    """
    root = Path(models_dir).expanduser()
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise CheckpointError(f"ComfyUI models folder {root} {problem}")
    given = dict(given or {})
    unknown = sorted(set(given) - set(COMPONENTS))
    if unknown:
        raise CheckpointError(f"unknown component(s) {unknown}; expected some of {list(COMPONENTS)}")
    files = {}
    for name in COMPONENTS:
        if given.get(name) is not None:
            files[name] = Path(given[name])
        elif name == "transformer":
            files[name] = _find_transformer(root, mode)
        else:
            files[name] = _one(root, name, _candidates(root, WANTED[name]))
    return files


def _find_transformer(root: Path, mode: Mode | None) -> Path:
    families = {m: _candidates(root, Wanted("", TRANSFORMER_FOLDERS, p)) for m, p in TRANSFORMER_PATTERNS.items()}
    if mode is None:
        found = families["inverted"] + families["forward"]
        if families["inverted"] and families["forward"]:
            raise CheckpointError(
                f"both the I2V ({_names(root, families['inverted'])}) and the F1 ({_names(root, families['forward'])}) "
                f"transformer are in {root}: choose one by the mode (inverted: I2V, forward: F1) or name the file "
                f"(transformer= / {FILE_FLAGS['transformer']})"
            )
        return _one(root, "transformer", found)
    if mode not in TRANSFORMER_PATTERNS:
        raise CheckpointError(f"mode: expected 'inverted' or 'forward', got {mode!r}")
    other = "forward" if mode == "inverted" else "inverted"
    if not families[mode] and families[other]:
        model = {"inverted": "I2V", "forward": "F1"}
        raise CheckpointError(
            f"{mode} mode runs the {model[mode]} transformer ({' or '.join(TRANSFORMER_PATTERNS[mode])} in "
            f"{_folders(TRANSFORMER_FOLDERS)} of {root}), but only the {model[other]} one is there "
            f"({_names(root, families[other])}): use the {other} mode, or name the file to run it anyway "
            f"(transformer= / {FILE_FLAGS['transformer']})"
        )
    wanted = Wanted(WANTED["transformer"].what, TRANSFORMER_FOLDERS, TRANSFORMER_PATTERNS[mode])
    return _one(root, "transformer", families[mode], wanted)


def _candidates(root: Path, wanted: Wanted) -> list[Path]:
    """The files under ``root``'s ``wanted.folders`` (sub-folders included) that match a pattern, sorted."""
    patterns = [p.lower() for p in wanted.patterns]
    found: set[Path] = set()
    for folder in wanted.folders:
        base = root / folder
        if base.is_dir():
            found.update(
                p
                for p in base.rglob("*")
                if p.is_file() and any(fnmatch.fnmatchcase(p.name.lower(), q) for q in patterns)
            )
    return sorted(found)


def _one(root: Path, name: str, found: list[Path], wanted: Wanted | None = None) -> Path:
    wanted = wanted or WANTED[name]
    override = f"{name}= / {FILE_FLAGS[name]}"
    if not found:
        present = [f for f in wanted.folders if (root / f).is_dir()]
        where = _folders(wanted.folders) + ("" if present else " (none of them exists)")
        raise CheckpointError(
            f"no {wanted.what} file in {root}: looked for {' or '.join(wanted.patterns)} in {where}; "
            f"put it there or name the file ({override})"
        )
    if len(found) > 1:
        raise CheckpointError(
            f"{len(found)} candidate {wanted.what} files in {root}: {_names(root, found)}; "
            f"name the one to use ({override})"
        )
    return found[0]


def _folders(folders: tuple[str, ...]) -> str:
    return " or ".join(f"{f}/" for f in folders)


def _names(root: Path, paths: list[Path]) -> str:
    return ", ".join(str(p.relative_to(root)) for p in paths)
