"""Hostile input: whatever a user types, the command answers with one line and touches no file of theirs.

Most cases run the command as a user does, in a subprocess, and check the exit code (2: the
input is wrong, 1: a fault), that stderr is one ``error:`` line without a traceback, and that
every file the test folder held beforehand is byte for byte the same afterwards.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framepack import cli
from framepack.cli import main
from framepack.errors import ConfigError, NumericalError, OutputError
from framepack.models.llama import LlamaConfig
from framepack.models.transformer import TransformerConfig
from tests.forked_command import CommandServer, Finished
from tests.transformer_support import TINY

# --- model config.json: every field its annotated JSON type ------------------------------------


def tiny_transformer_config() -> dict:
    return TransformerConfig(**TINY).to_dict()


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("num_layers", "2", "field 'num_layers' expects int, got '2' (str)"),
        ("num_layers", True, "field 'num_layers' expects int, got True (bool)"),
        ("num_layers", 2.0, "field 'num_layers' expects int, got 2.0 (float)"),
        ("guidance_embeds", 1, "field 'guidance_embeds' expects bool, got 1 (int)"),
        ("guidance_embeds", "true", "field 'guidance_embeds' expects bool, got 'true' (str)"),
        ("mlp_ratio", "4", "field 'mlp_ratio' expects float, got '4' (str)"),
        ("mlp_ratio", math.nan, "field 'mlp_ratio' expects float, got nan (float)"),
        ("qk_norm", None, "field 'qk_norm' expects str, got None (NoneType)"),
        ("rope_axes_dim", [4, "6", 6], "field 'rope_axes_dim' expects tuple[int, ...], got (4, '6', 6) (tuple)"),
        ("rope_axes_dim", 16, "field 'rope_axes_dim' expects tuple[int, ...], got 16 (int)"),
        ("image_condition_type", 3, "field 'image_condition_type' expects str | None, got 3 (int)"),
    ],
)
def test_model_config_field_of_the_wrong_type_is_named(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TransformerConfig.from_dict({**tiny_transformer_config(), field: value})
    assert str(caught.value) == f"TransformerConfig: {expected}"


def test_model_config_takes_an_int_for_a_float_and_null_for_an_optional() -> None:
    config = TransformerConfig.from_dict({**tiny_transformer_config(), "mlp_ratio": 4, "image_condition_type": None})
    assert config.mlp_ratio == 4 and config.image_condition_type is None
    assert TransformerConfig.from_dict(tiny_transformer_config()) == TransformerConfig(**TINY)


def test_model_config_mapping_fields_are_checked() -> None:
    llama = dict(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=32,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    assert LlamaConfig.from_dict({**llama, "rope_scaling": None}).rope_scaling is None
    with pytest.raises(ConfigError, match="field 'rope_scaling' expects Mapping"):
        LlamaConfig.from_dict({**llama, "rope_scaling": "linear"})


# --- the command, as a user runs it -------------------------------------------------------------

TINY_RUN = ["generate", "--tiny", "--seconds", "0.5", "--window", "2", "--steps", "1", "--resolution", "32"]
NO_ROOT = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")


def bomb_png() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (and no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def make_files(folder: Path) -> None:
    """The user's files every case starts from."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()
    (folder / "v.png").write_bytes(png)
    (folder / "still.mp4").write_bytes(png)  # an image whose name looks like an output
    (folder / "link.mp4").symlink_to("still.mp4")
    (folder / "garbage.png").write_bytes(b"this is not an image\n" * 10)
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "folder").mkdir()
    (folder / "folder.mp4").mkdir()
    (folder / "folder" / "keep.txt").write_text("mine")
    readonly = folder / "readonly"
    readonly.mkdir()
    (readonly / "keep.txt").write_text("mine")
    for name, config, weights in [
        ("badtype", {**tiny_transformer_config(), "num_layers": "2"}, None),
        ("badjson", None, None),
        ("corrupt", tiny_transformer_config(), b"\xff" * 64),
    ]:
        model = folder / name
        model.mkdir()
        (model / "config.json").write_text("{not json" if config is None else json.dumps(config))
        if weights is not None:
            (model / "diffusion_pytorch_model.safetensors").write_bytes(weights)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes (None for a folder), by relative path."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if not p.is_symlink()
    }


SURROGATE = b"\xff\xfe dancing"  # bytes that are not UTF-8: Python hands them over as lone surrogates

# (id, arguments, exit status, the start of the one stderr line)
CASES: list[tuple[str, list[str | bytes], int, str]] = [
    ("image-missing", [*TINY_RUN, "--image", "missing.png"], 2, "error: image file 'missing.png' does not exist"),
    (
        "image-garbage",
        [*TINY_RUN, "--image", "garbage.png"],
        2,
        "error: image file 'garbage.png' is not a readable image",
    ),
    (
        "image-truncated",
        [*TINY_RUN, "--image", "truncated.png"],
        2,
        "error: image file 'truncated.png' is not a readable image",
    ),
    ("image-zero-bytes", [*TINY_RUN, "--image", "empty.png"], 2, "error: image file 'empty.png' is empty (0 bytes)"),
    ("image-directory", [*TINY_RUN, "--image", "folder"], 2, "error: image path 'folder' is not a file"),
    (
        "image-bomb",
        [*TINY_RUN, "--image", "bomb.png"],
        2,
        "error: image file 'bomb.png' is not a readable image: Image size",
    ),
    (
        "end-image-garbage",
        [*TINY_RUN, "--end-image", "garbage.png"],
        2,
        "error: image file 'garbage.png' is not a readable",
    ),
    (
        "end-image-forward",
        [*TINY_RUN, "--end-image", "v.png", "--mode", "forward"],
        2,
        "error: end_image: only the 'inverted' mode can end on a given frame",
    ),
    (
        "out-folder",
        [*TINY_RUN, "--out", "folder.mp4"],
        2,
        "error: --out: expected a file, but 'folder.mp4' is a folder",
    ),
    (
        "out-folder-no-suffix",
        [*TINY_RUN, "--out", "folder"],
        2,
        "error: --out: expected a path ending in .mp4, got 'folder'",
    ),
    (
        "out-is-image",
        [*TINY_RUN, "--image", "v.png", "--out", "v.png"],
        2,
        "error: --out: expected a path ending in .mp4",
    ),
    (
        "out-same-file",
        [*TINY_RUN, "--image", "still.mp4", "--out", "./still.mp4"],
        2,
        "error: --out: expected a path of its own, but './still.mp4' is also the --image 'still.mp4'",
    ),
    (
        "out-link-to-image",
        [*TINY_RUN, "--image", "still.mp4", "--out", "link.mp4"],
        2,
        "error: --out: expected a path of its own, but 'link.mp4' is also the --image",
    ),
    (
        "out-is-end-image",
        [*TINY_RUN, "--end-image", "still.mp4", "--out", "still.mp4"],
        2,
        "error: --out: expected a path of its own, but 'still.mp4' is also the --end-image",
    ),
    (
        "out-is-run-dir",
        [*TINY_RUN, "--run-dir", "run.mp4", "--out", "run.mp4"],
        2,
        "error: --out: expected a path of its own, but 'run.mp4' is also the --run-dir",
    ),
    ("out-avi", [*TINY_RUN, "--out", "x.avi"], 2, "error: --out: expected a path ending in .mp4, got 'x.avi'"),
    (
        "out-missing-folder",
        [*TINY_RUN, "--out", "nowhere/x.mp4"],
        2,
        "error: --out: expected a file in an existing folder, but",
    ),
    (
        "out-under-a-file",
        [*TINY_RUN, "--out", "v.png/x.mp4"],
        2,
        "error: --out: expected a file in an existing folder, but",
    ),
    (
        "out-read-only",
        [*TINY_RUN, "--out", "readonly/x.mp4"],
        2,
        "error: --out: expected a file in a folder you can write to",
    ),
    (
        "out-exists",
        [*TINY_RUN, "--out", "still.mp4"],
        2,
        "error: --out: expected a new file, but 'still.mp4' exists (give another --out, or --overwrite)",
    ),
    ("plan-size-word", ["plan", "--size", "big"], 2, "error: --size: expected HxW like 480x640, got 'big'"),
    ("plan-size-zero", ["plan", "--size", "0x640"], 2, "error: image size must be two positive ints"),
    ("plan-size-three", ["plan", "--size", "1x2x3"], 2, "error: --size: expected HxW like 480x640, got '1x2x3'"),
    (
        "plan-seconds-1e9",
        ["plan", "--seconds", "1e9"],
        2,
        "error: seconds: expected a video of at most 27000 latent frames",
    ),
    ("plan-seconds-nan", ["plan", "--seconds", "nan"], 2, "error: seconds: expected a finite number > 0, got nan"),
    (
        "plan-window-100000",
        ["plan", "--window", "100000"],
        2,
        "error: window: expected an int in [1, 33] latent frames",
    ),
    (
        "plan-resolution-100000",
        ["plan", "--resolution", "100000"],
        2,
        "error: resolution must be a positive multiple of 16 up to 2048",
    ),
    (
        "seconds-1e9",
        [*TINY_RUN, "--seconds", "1e9"],
        2,
        "error: seconds: expected a video of at most 27000 latent frames",
    ),
    ("window-100000", [*TINY_RUN, "--window", "100000"], 2, "error: window: expected an int in [1, 33] latent frames"),
    (
        "resolution-100000",
        [*TINY_RUN, "--resolution", "100000"],
        2,
        "error: resolution: expected an int in [32, 2048], got 100000",
    ),
    ("resolution-100", [*TINY_RUN, "--resolution", "100"], 2, "error: resolution: expected a multiple of 16, got 100"),
    ("steps-0", [*TINY_RUN, "--steps", "0"], 2, "error: steps: expected an int >= 1, got 0"),
    ("steps-1000000", [*TINY_RUN, "--steps", "1000000"], 2, "error: steps: expected an int in [1, 1000], got 1000000"),
    ("fps-0", [*TINY_RUN, "--fps", "0"], 2, "error: fps: expected an int >= 1, got 0"),
    ("crf-99", [*TINY_RUN, "--crf", "99"], 2, "error: crf: expected an int in [0, 51] (x264's range), got 99"),
    ("seed-2**64", [*TINY_RUN, "--seed", str(2**64)], 2, "error: seed: expected an int below 2**64"),
    ("real-cfg-negative", [*TINY_RUN, "--real-cfg", "-1"], 2, "error: real_cfg: expected a number > 0, got -1.0"),
    ("cache-warp", [*TINY_RUN, "--cache", "warp"], 2, "error: cache 'warp': unknown policy 'warp'"),
    (
        "cache-threshold-word",
        [*TINY_RUN, "--cache", "teacache:abc"],
        2,
        "error: cache 'teacache:abc': threshold 'abc' is not a number",
    ),
    (
        "device-foo",
        [*TINY_RUN, "--device", "foo"],
        2,
        "error: --device: expected a device like cpu, cuda or cuda:1, got 'foo'",
    ),
    ("device-cuda-7", [*TINY_RUN, "--device", "cuda:7"], 2, "error: --device cuda:7: this machine has"),
    ("device-meta", [*TINY_RUN, "--device", "meta"], 2, "error: --device meta: this machine has no meta device"),
    (
        "vram-budget-negative",
        [*TINY_RUN, "--vram-budget", "-1"],
        2,
        "error: --vram-budget: expected a finite number of GB > 0, got -1",
    ),
    (
        "vram-budget-zero",
        [*TINY_RUN, "--vram-budget", "0"],
        2,
        "error: --vram-budget: expected a finite number of GB > 0, got 0",
    ),
    (
        "vram-budget-nan",
        [*TINY_RUN, "--vram-budget", "nan"],
        2,
        "error: --vram-budget: expected a finite number of GB > 0, got nan",
    ),
    (
        "vram-budget-inf",
        [*TINY_RUN, "--vram-budget", "inf"],
        2,
        "error: --vram-budget: expected a finite number of GB > 0, got inf",
    ),
    (
        "prompt-not-utf8",
        [*TINY_RUN, "--prompt", SURROGATE],
        2,
        "error: --prompt: expected UTF-8 text, got bytes that are not (character 0 is '\\udcff')",
    ),
    (
        "negative-prompt-not-utf8",
        [*TINY_RUN, "--negative-prompt", SURROGATE],
        2,
        "error: --negative-prompt: expected UTF-8 text",
    ),
    ("no-image", ["generate", "--prompt", "x"], 2, "error: --image: expected an image path"),
    (
        "model-missing",
        ["generate", "--image", "v.png", "--model", "/no/such/folder"],
        2,
        "error: '/no/such/folder' is neither an existing folder nor a hub repo id",
    ),
    (
        "model-config-string-for-int",
        ["generate", "--image", "v.png", "--model", "badtype"],
        2,
        "error: TransformerConfig: field 'num_layers' expects int, got '2' (str)",
    ),
    (
        "model-config-not-json",
        ["generate", "--image", "v.png", "--model", "badjson"],
        2,
        "error: TransformerConfig: cannot read config file badjson/config.json",
    ),
    (
        "model-corrupt-weights",
        ["generate", "--image", "v.png", "--model", "corrupt"],
        2,
        "error: corrupt/diffusion_pytorch_model.safetensors is corrupt or truncated",
    ),
]


# These run also as a user runs them, in processes of their own through ``python -m framepack.cli``:
# bytes argv, the module's __main__, the real exit status and stderr, an offline hub. Each
# process is forked from one warm Python (tests/forked_command.py), so a case costs the
# command, not a Python and torch start-up; still one or more of every kind, not all.
SUBPROCESS_CASES = (
    "image-missing", "image-garbage", "image-truncated", "image-zero-bytes", "image-directory", "image-bomb",
    "end-image-forward", "out-folder", "out-is-image", "out-same-file", "out-link-to-image", "out-avi",
    "out-missing-folder", "plan-size-word", "plan-seconds-1e9", "plan-window-100000", "plan-resolution-100000",
    "seconds-1e9", "resolution-100", "steps-1000000", "crf-99", "seed-2**64", "cache-warp", "device-foo",
    "vram-budget-nan", "prompt-not-utf8", "model-missing", "model-config-string-for-int", "model-corrupt-weights",
)  # fmt: skip


def prepare(folder: Path) -> dict[str, bytes | None]:
    """The user's files in ``folder`` (one unwritable), and their snapshot."""
    make_files(folder)
    (folder / "readonly").chmod(0o555)
    return snapshot(folder)


def check(folder: Path, before: dict, status: int, err: str, expected_status: int, message: str) -> None:
    (folder / "readonly").chmod(0o755)
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert status == expected_status, err
    assert snapshot(folder) == before, "a file in the user's folder changed"


def marks(name: str) -> list:
    return [NO_ROOT] if name == "out-read-only" else []


@pytest.mark.parametrize(
    ("arguments", "status", "message"), [pytest.param(*case[1:], id=case[0], marks=marks(case[0])) for case in CASES]
)
def test_hostile_input_is_one_line_and_touches_no_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list,
    status: int,
    message: str,
) -> None:
    before = prepare(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = main([os.fsdecode(a) for a in arguments])
    check(tmp_path, before, got, capsys.readouterr().err, status, message)


@pytest.fixture(scope="module")
def subprocess_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict, Finished]]:
    """The SUBPROCESS_CASES run two at a time: id -> (folder, snapshot before, how the command ended)."""
    base = tmp_path_factory.mktemp("hostile")
    cases = {case[0]: case[1] for case in CASES}
    commands, folders, befores = [], [], []
    for name in SUBPROCESS_CASES:
        folders.append(base / name)
        folders[-1].mkdir()
        befores.append(prepare(folders[-1]))
        commands.append((["-m", "framepack.cli", *cases[name]], folders[-1]))
    server = CommandServer({**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        ended = server.run(commands, workers=2, timeout=120)
    finally:
        server.close()
    return {name: outcome for name, *outcome in zip(SUBPROCESS_CASES, folders, befores, ended)}


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_hostile_input_through_the_command(subprocess_outcomes: dict, name: str) -> None:
    _, _, status, message = next(case for case in CASES if case[0] == name)
    folder, before, ended = subprocess_outcomes[name]
    check(folder, before, ended.returncode, ended.stderr, status, message)
    # The seconds count from the fork, after Python and torch started: the refusal itself is instant.
    assert ended.seconds < 60, "a refusal must come before any model or long computation"


# --- faults: exit status 1, one line, a hint where there is one ---------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.\nGPU 0 has 8 GiB"),
            "error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has 8 GiB); "
            "try --vram-budget, --vae-tiling or a lower --resolution",
        ),
        (MemoryError(), "error: out of memory (MemoryError); try --vram-budget"),
        (
            OSError(28, "No space left on device", "/videos/out.mp4"),
            "error: [Errno 28] No space left on device: '/videos/out.mp4'",
        ),
        (OutputError("cannot write /videos/out.mp4: disk full"), "error: cannot write /videos/out.mp4: disk full"),
        (NumericalError("sampling produced NaN"), "error: sampling produced NaN"),
        (
            RuntimeError("boom\nsecond line"),
            "error: internal error: RuntimeError: boom second line (run with --debug for the traceback)",
        ),
    ],
)
def test_faults_exit_1_with_one_line(
    error: Exception, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "_plan", fail)
    assert main(["plan"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err
    with pytest.raises(type(error)):  # --debug: the traceback, as it was
        main(["plan", "--debug"])


def test_a_run_too_large_for_the_ram_is_refused_before_sampling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("framepack.memory.host.available_host_bytes", lambda: 1 << 20)
    assert main([*TINY_RUN, "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resolution 32 --window 2: a section needs about") and "RAM available" in err
    assert list(tmp_path.iterdir()) == []
