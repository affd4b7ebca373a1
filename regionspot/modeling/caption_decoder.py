"""The region captioner: a TAP-style causal transformer text decoder prompted by one region's feature vector.

The region's (N, condition_dim) vector goes through one bias-free Linear into `prefix_tokens` tokens of `width`
placed before the text; pre-norm blocks of causal self-attention (rotary positions over prefix and text) and a
GELU MLP follow, then a final LayerNorm and an output layer untied from the token embedding. `generate` decodes
greedily or by beam search, all regions (and beams) at once, with a per-block key/value cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KVCache:
    """Keys and values of the positions a decoder has already run, one (k, v) pair of (N, H, T, Dh) per block."""

    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def length(self) -> int:
        """T: positions cached, prefix included."""
        return self.layers[0][0].shape[2] if self.layers else 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (N',) of the batch, e.g. the beams that survive a step."""
        self.layers = [(k[index], v[index]) for k, v in self.layers]


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(T,) positions -> cos and sin tables, each (T, head_dim), for `apply_rotary` (float32)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq  # (T, Dh/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, Dh): the two halves rotate together
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (N, H, T, Dh) queries or keys by their positions' angles (the "rotate half" pairing)."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary positions; new positions attend to the cached ones too."""

    def __init__(self, *, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, width // num_heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attend.

        Args:
            x: (N, T, D) the new positions.
            cos, sin: (T, Dh) their rotary tables.
            past: the (N, H, S, Dh) keys and values of the S positions before them, or None.

        Returns:
            (N, T, D) the attention output, and the (N, H, S + T, Dh) keys and values to cache.
        """
        n, t, width = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (N, H, T, Dh)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        mask, causal = _causal_mask(t, k.shape[2], x.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(n, t, width)), (k, v)


def _causal_mask(new: int, total: int, device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """The mask of `new` queries that follow `total - new` cached keys, as (attn_mask, is_causal) for SDPA."""
    past = total - new
    if past == 0:
        return None, True
    if new == 1:  # one new position sees everything before it
        return None, False
    # SDPA's is_causal aligns the triangle top-left, which is wrong once keys outnumber queries
    return torch.ones(new, total, dtype=torch.bool, device=device).tril(diagonal=past), False


class DecoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, *, width: int, num_heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width=width, num_heads=num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, width), nn.Dropout(dropout))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(N, T, D) -> (N, T, D), and this block's keys and values to cache (see `CausalSelfAttention`)."""
        attended, kv = self.attn(self.norm1(x), cos, sin, past)
        x = x + self.dropout(attended)
        return x + self.mlp(self.norm2(x)), kv


class CaptionDecoder(nn.Module):
    """A causal text decoder conditioned on a region; TAP's decoder at the defaults (~38M parameters in the blocks).

    Args:
        vocab_size: size of the tokenizer's vocabulary (`CaptionTokenizer.vocab_size`).
        condition_dim: width of a region's condition vector.
        width, depth, num_heads, mlp_dim, dropout: transformer settings (TAP: 512, 12, 8, 2048, 0.1).
        max_length: most text tokens, BOS and EOS included (TAP: 40).
        prefix_tokens: how many tokens the condition becomes before the text (TAP: 1).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        condition_dim: int,
        width: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        dropout: float = 0.1,
        max_length: int = 40,
        prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        sizes = dict(vocab_size=vocab_size, condition_dim=condition_dim, width=width, depth=depth)
        sizes.update(num_heads=num_heads, mlp_dim=mlp_dim, max_length=max_length, prefix_tokens=prefix_tokens)
        if bad := {name: value for name, value in sizes.items() if value < 1}:
            raise ValueError(f"caption decoder sizes must be positive, got {bad}")
        if width % num_heads or (width // num_heads) % 2:
            raise ValueError(f"width {width} must split into {num_heads} heads of an even size (rotary pairs)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.vocab_size, self.condition_dim, self.width = vocab_size, condition_dim, width
        self.max_length, self.prefix_tokens, self.head_dim = max_length, prefix_tokens, width // num_heads
        self.condition_proj = nn.Linear(condition_dim, prefix_tokens * width, bias=False)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(width=width, num_heads=num_heads, mlp_dim=mlp_dim, dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, condition: torch.Tensor, tokens: torch.Tensor, *, cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits: logits[:, t] predicts tokens[:, t + 1].

        Args:
            condition: (N, condition_dim) one vector per region.
            tokens: (N, L) int64 text, BOS first, L <= max_length.
            cache: positions already run (updated in place). With a cache, only the tokens it does not hold yet
                run, and only their logits come back; an empty cache runs the prefix and all of `tokens`.

        Returns:
            (N, L', vocab_size) logits of the L' tokens run (L' = L without a cache).
        """
        self._check_inputs(condition, tokens, cache)
        offset = 0 if cache is None else cache.length
        if offset == 0:
            prefix = self.condition_proj(condition.to(self.condition_proj.weight.dtype))  # (N, P * D)
            prefix = prefix.view(-1, self.prefix_tokens, self.width)  # (N, P, D); -1: N stays symbolic in an export
            x = torch.cat([prefix, self.token_embedding(tokens)], dim=1)  # (N, P + L, D)
        else:
            x = self.token_embedding(tokens[:, offset - self.prefix_tokens :])
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        cos, sin = rotary_tables(positions, self.head_dim)
        x = self.embed_dropout(x)  # (N, T, D)
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, cos, sin, None if offset == 0 else cache.layers[i])
            present.append(kv)
        if cache is not None:
            cache.layers = present
        if offset == 0:
            x = x[:, self.prefix_tokens :]  # the prefix predicts nothing we score
        return self.head(self.norm(x))

    def _check_inputs(self, condition: torch.Tensor, tokens: torch.Tensor, cache: KVCache | None) -> None:
        if condition.ndim != 2 or condition.shape[1] != self.condition_dim:
            raise ValueError(f"condition must be (N, {self.condition_dim}), got {tuple(condition.shape)}")
        if tokens.ndim != 2 or tokens.dtype != torch.long or tokens.shape[1] < 1:
            raise ValueError(f"tokens must be (N, L >= 1) int64, got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[0] != condition.shape[0]:  # shapes, not len(): len() fixes N in an export (regionspot.onnx)
            raise ValueError(f"{condition.shape[0]} conditions for {tokens.shape[0]} token rows")
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the decoder's max_length={self.max_length}")
        if cache is None or not cache.length:
            return
        seen, rows = cache.length - self.prefix_tokens, cache.layers[0][0].shape[0]
        if seen >= tokens.shape[1] or rows != len(tokens):
            raise ValueError(f"the cache holds {seen} tokens of {rows} rows, so it cannot run {tuple(tokens.shape)}")

    def loss(self, condition: torch.Tensor, tokens: torch.Tensor, *, pad_id: int) -> torch.Tensor:
        """Mean next-token cross-entropy over the non-pad targets tokens[:, 1:] (EOS included).

        Args:
            condition: (N, condition_dim); tokens: (N, L >= 2) `CaptionTokenizer.encode` rows.
        """
        if tokens.ndim != 2 or not 2 <= tokens.shape[1] <= self.max_length:
            raise ValueError(f"the loss needs (N, 2 <= L <= {self.max_length}) tokens, got {tuple(tokens.shape)}")
        logits = self(condition, tokens[:, :-1])  # (N, L-1, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), ignore_index=pad_id)

    @torch.no_grad()
    def generate(
        self,
        condition: torch.Tensor,
        *,
        bos_id: int,
        eos_id: int,
        max_length: int | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Decode a caption for every region, all at once. The caller puts the decoder in eval mode (no dropout).

        Args:
            condition: (N, condition_dim).
            bos_id, eos_id: the tokenizer's BOS (what decoding starts from) and EOS (what ends a caption).
            max_length: most tokens, BOS included (default and at most the decoder's `max_length`).
            num_beams: 1 = greedy; more = beam search keeping that many hypotheses per region, ended ones scored
                by sum log-prob / length**length_penalty (length counts EOS, not BOS). A region stops once
                num_beams hypotheses have ended and none of its live ones, scored at its current length, beats
                the best ended one (exact for length_penalty=0, where sums only fall; one beam is exactly greedy).
            length_penalty: the exponent above (0 = plain sum of log-probs; more favours longer captions).
            use_cache: reuse keys and values; False reruns the whole sequence at every step (the reference).

        Returns:
            (N, L') int64 tokens after BOS. A row ends with its EOS and is padded with `eos_id` after it; a row
            that reached max_length without EOS has none. L' is the longest row, at most max_length - 1.
        """
        max_length = self.max_length if max_length is None else max_length
        self._check_generate(condition, bos_id, eos_id, max_length, num_beams)
        if len(condition) == 0:
            return torch.zeros(0, 0, dtype=torch.long, device=condition.device)
        steps, cache = max_length - 1, KVCache() if use_cache else None
        if num_beams == 1:
            return self._greedy(condition, bos_id=bos_id, eos_id=eos_id, steps=steps, cache=cache)
        return self._beam_search(
            condition, bos_id=bos_id, eos_id=eos_id, steps=steps, cache=cache, beams=num_beams, alpha=length_penalty
        )

    def _check_generate(self, condition: torch.Tensor, bos_id: int, eos_id: int, max_length: int, beams: int) -> None:
        if condition.ndim != 2 or condition.shape[1] != self.condition_dim:
            raise ValueError(f"condition must be (N, {self.condition_dim}), got {tuple(condition.shape)}")
        if not 2 <= max_length <= self.max_length:
            raise ValueError(f"max_length must be in [2, {self.max_length}] (BOS included), got {max_length}")
        if bad := [i for i in (bos_id, eos_id) if not 0 <= i < self.vocab_size]:
            raise ValueError(f"bos_id/eos_id {bad} are outside the vocabulary of {self.vocab_size}")
        if beams < 1:
            raise ValueError(f"num_beams must be positive, got {beams}")

    def _next_log_probs(
        self, condition: torch.Tensor, tokens: torch.Tensor, cache: KVCache | None, bos_id: int
    ) -> torch.Tensor:
        """(N, T) tokens so far -> (N, V) float32 log-probs of the next; BOS, never a target, is ruled out."""
        logits = self(condition, tokens, cache=cache)[:, -1].float()
        logits[:, bos_id] = -math.inf
        return logits.log_softmax(dim=-1)

    def _greedy(
        self, condition: torch.Tensor, *, bos_id: int, eos_id: int, steps: int, cache: KVCache | None
    ) -> torch.Tensor:
        tokens = torch.full((len(condition), 1), bos_id, dtype=torch.long, device=condition.device)
        ended = torch.zeros(len(condition), dtype=torch.bool, device=condition.device)
        for _ in range(steps):
            token = self._next_log_probs(condition, tokens, cache, bos_id).argmax(dim=-1).masked_fill(ended, eos_id)
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            ended |= token == eos_id
            if ended.all():
                break
        return tokens[:, 1:]

    def _beam_search(
        self,
        condition: torch.Tensor,
        *,
        bos_id: int,
        eos_id: int,
        steps: int,
        cache: KVCache | None,
        beams: int,
        alpha: float,
    ) -> torch.Tensor:
        n, k, device = len(condition), beams, condition.device
        condition = condition.repeat_interleave(k, dim=0)  # (N*K, C): beam j of region i is row i*K + j
        tokens = torch.full((n * k, 1), bos_id, dtype=torch.long, device=device)
        sums = torch.full((n, k), -math.inf, device=device)
        sums[:, 0] = 0.0  # the K beams start identical: expand one, or they would stay copies
        best = _BestEnded(n, k, steps=steps, eos_id=eos_id, alpha=alpha, device=device)
        first_row = torch.arange(n, device=device)[:, None] * k  # (N, 1)
        for step in range(steps):
            log_probs = self._next_log_probs(condition, tokens, cache, bos_id).view(n, k, -1)
            vocab = log_probs.shape[-1]
            # 2K candidates: even if K of them end here, K go on
            top, index = (sums[..., None] + log_probs).view(n, -1).topk(min(2 * k, k * vocab), dim=1)
            beam, token = index // vocab, index % vocab  # (N, 2K)
            ended = token == eos_id
            # as fairseq: an EOS among the K best candidates ends a hypothesis
            history = tokens[(first_row + beam[:, :k]).view(-1), 1:].view(n, k, step)
            with_eos = torch.cat([history, history.new_full((n, k, 1), eos_id)], dim=-1)
            best.offer(top[:, :k], ended[:, :k], with_eos)
            go_on = torch.sort(ended.to(torch.int8), dim=1, stable=True).indices[:, :k]  # the K best non-EOS
            sums = top.gather(1, go_on)
            source = (first_row + beam.gather(1, go_on)).view(-1)
            tokens = torch.cat([tokens[source], token.gather(1, go_on).view(-1, 1)], dim=1)
            if cache is not None:
                cache.reorder(source)
            best.update_done(sums, length=step + 1)
            if best.done.all():
                break
        else:  # max_length reached: the live beams count as ended there, without EOS
            best.offer(sums, torch.ones_like(sums, dtype=torch.bool), tokens[:, 1:].view(n, k, steps))
        return best.sequences()


class _BestEnded:
    """Beam search's record per region: the best ended hypothesis so far, how many have ended, whether it is over."""

    def __init__(self, n: int, beams: int, *, steps: int, eos_id: int, alpha: float, device: torch.device) -> None:
        self.beams, self.alpha = beams, alpha
        self.score = torch.full((n,), -math.inf, device=device)
        self.tokens = torch.full((n, steps), eos_id, dtype=torch.long, device=device)
        self.length = torch.zeros(n, dtype=torch.long, device=device)
        self.count = torch.zeros(n, dtype=torch.long, device=device)
        self.done = torch.zeros(n, dtype=torch.bool, device=device)  # (N,) regions whose search is over

    def update_done(self, live_sums: torch.Tensor, *, length: int) -> None:
        """End the regions with `beams` ended hypotheses whose (N, K) live sums, at `length`, beat none of them."""
        hopeless = live_sums.max(dim=1).values / length**self.alpha <= self.score
        self.done |= (self.count >= self.beams) & hopeless

    def offer(self, sums: torch.Tensor, ended: torch.Tensor, tokens: torch.Tensor) -> None:
        """Candidates of every region: (N, M) sum log-probs, (N, M) whether each ends, (N, M, T) their tokens."""
        length = tokens.shape[-1]
        valid = ended & ~self.done[:, None] & sums.isfinite()
        scores = (sums / length**self.alpha).masked_fill(~valid, -math.inf)
        score, pick = scores.max(dim=1)
        better = score > self.score
        self.count += valid.sum(dim=1)
        self.score = torch.where(better, score, self.score)
        self.length = torch.where(better, length, self.length)
        self.tokens[better, :length] = tokens[better, pick[better]]

    def sequences(self) -> torch.Tensor:
        """(N, L') the best hypotheses, padded with EOS after their EOS."""
        return self.tokens[:, : int(self.length.max())]
