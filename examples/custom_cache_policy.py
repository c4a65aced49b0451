"""Write your own step-cache policy by subclassing ``CachePolicy``.

``SkipAlternateMiddleSteps`` computes the first and last steps of every section and, in
between, runs the block stack only on every other step, reusing the stored residual on the
others. It needs no indicator, so it decides from the step index alone; a policy that wants
to measure something sets ``needs_modulated_input`` or ``decides_after_first_block`` and
reads ``step.modulated_input`` / ``step.first_block_residual``.

    python examples/custom_cache_policy.py --tiny                 # offline, tiny random models
    python examples/custom_cache_policy.py --image dancer.png     # the real checkpoints
"""

from __future__ import annotations

import math
from typing import Any

from framepack.cache import CachePolicy, CacheStep


class SkipAlternateMiddleSteps(CachePolicy):
    """Compute the first ``warmup`` and last ``cooldown`` fractions of a section; skip every other step between."""

    def __init__(self, warmup: float = 0.2, cooldown: float = 0.1) -> None:
        super().__init__()
        self.warmup = warmup
        self.cooldown = cooldown

    def should_compute(self, step: CacheStep, state: dict[str, Any]) -> bool:
        first_middle = math.ceil(self.warmup * step.num_steps)
        first_tail = step.num_steps - math.ceil(self.cooldown * step.num_steps)
        if step.step < first_middle or step.step >= first_tail:
            return True
        return (step.step - first_middle) % 2 == 0


def main() -> None:
    # Imported here so that tests can import the policy without the examples folder on the path.
    from common import example_args, pipeline_and_image, resolution, steps

    from framepack import GenerationConfig

    args = example_args("A cache policy written by subclassing CachePolicy.", "custom_cache_policy.mp4")
    pipe, image = pipeline_and_image(args)
    # The class is the factory: every run builds a fresh policy (an instance would serve as a template).
    config = GenerationConfig(
        seconds=1.0 if args.tiny else 5.0,
        steps=max(steps(args), 10),
        resolution=resolution(args),
        cache=SkipAlternateMiddleSteps,
    )
    run = pipe.stream(image, args.prompt, config)
    for section in run:
        stats = section.cache_stats
        print(
            f"section {section.index}: computed steps {stats.computed.get('positive')}, skipped {stats.skipped.get('positive')}"
        )
    video = run.result()
    print(f"wrote {video.save(args.out)}: {video.num_frames} frames")


if __name__ == "__main__":
    main()
