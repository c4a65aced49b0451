"""Regenerate tests/data/clip_tokenizer_reference.json (not a test; run by hand).

The reference is transformers 4.46.2's *slow* CLIPTokenizer without ftfy, which FramePack
runs; transformers 5.x has no slow CLIP tokenizer. Usage, in an environment with
transformers==4.46.2 and without ftfy:

    python tests/encoders_make_clip_reference.py tests/data/clip-tokenizer
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROMPTS = [
    "The man dances energetically, leaping mid-air with fluid arm swings and quick footwork.",
    "",
    "   leading and trailing   spaces\t\ttabs\nnew\r\nlines   ",
    "Unicode: café naïve Ünïcödé ÆØÅ straße İstanbul ΣΊΣΥΦΟΣ ὈΔΥΣΣΕΎΣ",
    "Emoji 😀🎉👩‍👩‍👧‍👦 🇫🇷 and ❤️ hearts!!!",
    "Punctuation... !?!? (parens) [brackets] {braces} \"quotes\" 'single' it's we're I'll they've she'd I'm don't",
    "中文字符 mixed with English 日本語のテキスト 한국어",
    "zero\u200bwidth\u200djoiner soft\u00adhyphen nel\u0085x private\ue000use nul\x00x rep\ufffdx",
    "cafe\u0301 decomposed e\u0301",
    "numbers 12345 3.14159 1,000,000 2nd 3rd",
    "a<|endoftext|>b <|startoftext|> c",
    "nbsp\u00a0here ideographic\u3000space em\u2003space line\u2028sep",
    "UPPER CASE SHOUTING AND MiXeD cAsE",
    "word " * 120,
]


def main(folder: str) -> None:
    import transformers
    from transformers.models.clip.tokenization_clip import CLIPTokenizer

    tokenizer = CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"))
    if tokenizer.fix_text is not None:
        raise SystemExit("ftfy is installed; FramePack's reference runs without it")
    cases = [
        {
            "prompt": p,
            "input_ids": tokenizer(p, padding="max_length", max_length=77, truncation=True).input_ids,
            "untruncated_length": len(tokenizer(p).input_ids),
        }
        for p in PROMPTS
    ]
    out = Path(__file__).parent / "data" / "clip_tokenizer_reference.json"
    reference = json.dumps(f"transformers {transformers.__version__} slow CLIPTokenizer, no ftfy")
    rows = ",\n".join(json.dumps(case, ensure_ascii=True) for case in cases)  # one case per line
    out.write_text(f'{{"reference": {reference},\n"cases": [\n{rows}\n]}}\n')


if __name__ == "__main__":
    main(sys.argv[1])
