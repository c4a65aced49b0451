"""Ulysses sequence parallelism for the transformer's block stack, on ``torch.distributed``.

Each of the N ranks of a group holds 1/N of the image-stream tokens and 1/N of the context
tokens (image-embedding and text tokens), zero-padded at the end of each stream to a multiple
of N. Before every attention an all-to-all turns each rank's [L/N tokens, all heads] q, k, v
into [all tokens, H/N heads]; attention runs on those heads, and a second all-to-all turns the
result back into [L/N tokens, all heads]. Everything else in a block is per token, so it runs
on each rank's own tokens: RoPE with each rank's own slice of the table.

After the all-to-all a rank sees the tokens in rank order, [rank 0's image | rank 0's context |
rank 1's image | …]: attention does not depend on the order of the keys, and the padding
tokens (and, for a batch with uneven prompts, the padded text) are masked out as keys.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..models.layers import attention


def valid_group_sizes(heads: int) -> list[int]:
    """The rank counts Ulysses can split ``heads`` attention heads over."""
    return [n for n in range(1, heads + 1) if heads % n == 0]


class UlyssesParallel:
    """A group of ranks that share one transformer call's tokens (``FramePackTransformer.sequence_parallel``)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.bytes_exchanged = 0  # all-to-all bytes this rank sent, for benchmarks

    def check_heads(self, heads: int) -> None:
        if heads % self.size:
            raise ConfigError(
                f"ulysses: {heads} attention heads cannot be split over {self.size} ranks; "
                f"use a rank count in {valid_group_sizes(heads)}"
            )

    def split(self, n_img: int, n_ctx: int, rope: torch.Tensor, mask: torch.Tensor | None, batch: int) -> UlyssesSplit:
        """The layout of one call: ``n_img`` image and ``n_ctx`` context tokens over the group."""
        n = self.size
        img_local, ctx_local = -(-n_img // n), -(-n_ctx // n)
        rank = self.rank
        # The global joint index of every gathered token (rank order), -1 for padding.
        img_index = torch.arange(n * img_local).view(n, img_local)
        ctx_index = n_img + torch.arange(n * ctx_local).view(n, ctx_local)
        img_index[img_index >= n_img] = -1
        ctx_index[ctx_index >= n_img + n_ctx] = -1
        order = torch.cat([img_index, ctx_index], dim=1).flatten()
        padded = bool((order < 0).any())
        key_mask = None
        if padded or mask is not None:
            device = rope.device
            valid = (order >= 0).to(device)
            key_mask = valid.expand(batch, -1)
            if mask is not None:  # [B, 1, 1, n_img + n_ctx] key mask of uneven prompts
                key_mask = key_mask & mask[:, 0, 0, order.clamp_min(0).to(device)]
            key_mask = key_mask[:, None, None]
        start = rank * img_local
        local_rope = rope[:, start : start + img_local]
        if local_rope.shape[1] < img_local:  # padding tokens rotate by 1 (no rotation)
            pad = torch.ones(
                rope.shape[0], img_local - local_rope.shape[1], rope.shape[2], dtype=rope.dtype, device=rope.device
            )
            local_rope = torch.cat([local_rope, pad], dim=1)
        return UlyssesSplit(self, n_img, n_ctx, img_local, ctx_local, local_rope, key_mask)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[B, L/N, H, hd] x3 (this rank's tokens) -> [B, L/N, H*hd]: attention over every rank's tokens."""
        n = self.size
        batch, tokens, heads, head_dim = q.shape
        # [N (head group, sent to that rank), B, L/N, 3, H/N, hd]
        qkv = torch.stack([q, k, v], dim=2).unflatten(3, (n, heads // n)).permute(3, 0, 1, 2, 4, 5).contiguous()
        received = self._all_to_all(qkv)  # [N (source rank), B, L/N, 3, H/N, hd]
        gathered = received.permute(1, 0, 2, 3, 4, 5).flatten(1, 2)  # [B, N*L/N, 3, H/N, hd]
        out = attention(*gathered.unbind(2), mask)  # [B, L, H/N*hd]
        out = out.view(batch, n, tokens, heads // n, head_dim).transpose(0, 1).contiguous()
        back = self._all_to_all(out)  # [N (head group), B, L/N, H/N, hd]
        return back.permute(1, 2, 0, 3, 4).reshape(batch, tokens, heads * head_dim)

    def _all_to_all(self, chunks: torch.Tensor) -> torch.Tensor:
        received = torch.empty_like(chunks)
        dist.all_to_all_single(received, chunks, group=self.group)
        self.bytes_exchanged += chunks.numel() * chunks.element_size() * (self.size - 1) // self.size
        return received

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        """Group rank 0's ``flag`` on every rank of the group."""
        value = torch.tensor([int(flag)], device=device)
        dist.broadcast(value, group=self.group, group_src=0)
        return bool(value.item())

    def all_gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's ``local`` [B, l, ...] concatenated on dim 1, in rank order."""
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)


@dataclasses.dataclass(frozen=True)
class UlyssesSplit:
    """One call's tokens over the group: what this rank holds and how the whole is gathered back."""

    parallel: UlyssesParallel
    n_img: int
    n_ctx: int
    img_local: int  # image tokens per rank, padding included
    ctx_local: int
    rope: torch.Tensor  # this rank's slice of the RoPE table, [Bi, img_local, hd/2]
    key_mask: torch.Tensor | None  # [B, 1, 1, N * (img_local + ctx_local)] in gathered order

    def local_joint(self, image: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """This rank's [image | context] tokens, zero-padded: [B, img_local + ctx_local, D]."""
        rank = self.parallel.rank
        return torch.cat(
            [_slice_padded(image, rank, self.img_local), _slice_padded(context, rank, self.ctx_local)], dim=1
        )

    def gather_image(self, local_image: torch.Tensor) -> torch.Tensor:
        """The whole image stream [B, n_img, D] from every rank's image tokens."""
        return self.parallel.all_gather(local_image)[:, : self.n_img]

    def agree(self, compute: bool) -> bool:
        """A cache policy's decision for this call, the same on every rank: group rank 0's. Each rank
        decides from its own copy of the whole image stream; copies equal to the last bit make the
        decisions equal, but one rounding apart they could differ and the ranks' collectives would
        no longer pair up."""
        return self.parallel.broadcast_flag(compute, self.rope.device)


def _slice_padded(tokens: torch.Tensor, rank: int, length: int) -> torch.Tensor:
    part = tokens[:, rank * length : (rank + 1) * length]
    if part.shape[1] == length:
        return part
    pad = part.new_zeros(part.shape[0], length - part.shape[1], part.shape[2])
    return torch.cat([part, pad], dim=1)
