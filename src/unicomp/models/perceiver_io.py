"""Perceiver IO (Jaegle et al. 2021, arXiv 2107.14795) and the plain Perceiver (Jaegle et al.
2021, arXiv 2103.03206), compact. Read bottom-up: ``PerceiverIO`` is the whole model.

    x -> embed_in (+ position features)                       inputs   (B, T, C)
    latents (N, D) -- cross-attend to the inputs -->          encode   (B, N, D)   sec. 3.1
    num_blocks x self_attends_per_block latent self-attention process  (B, N, D)   sec. 3.1
    output queries (O, E) -- cross-attend to the latents -->  decode   (B, O, E)   sec. 3.2
    -> head                                                   logits   (B, O, d_out)

``decoder="pool"`` is the plain Perceiver instead: mean of the latents -> linear head.

Cost is linear in the input size T and the output size O: the inputs are only ever keys and
values of one cross-attention (O(T N)), the queries only queries of another (O(O N)); the
deep part works on the N latents alone (O(L N^2)); paper sec. 3.1. ``flops_per_example``
counts it.

Numerics and structure match ``transformers``' PerceiverModel with a PerceiverBasicDecoder,
layer for layer (tests/test_perceiver.py checks the outputs agree), so DeepMind's released
checkpoints load into this file (unicomp.models.perceiver_pretrained). Two of transformers'
conventions that the paper leaves open and that we keep for that reason:

* the query residual: the encoder's cross-attention adds its (un-normalised) query, the
  latents, to the attention output (``query_residual=True``); the decoder does not by default
  (``decoder_query_residual=False``), because a query (a position) and an output (a label)
  mean different things (paper sec. 3.2 and its attention-module appendix);
* there is no final LayerNorm after the process stage: the decoder's key/value LayerNorm
  normalises the latents it reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from unicomp.tasks.base import TaskSpec

QUERIES = ("auto", "learned", "fourier", "single", "inputs")
DECODERS = ("query", "pool")
INPUT_POSITIONS = ("learned", "fourier")


def fourier_features(index_dims: tuple[int, ...], num_bands: int) -> torch.Tensor:
    """Fourier position features of every point of a grid: (prod(index_dims), d * (2K + 1)).

    Positions are spread evenly over [-1, 1] in each of the d dimensions; K frequency bands
    run linearly from 1 to the Nyquist frequency of that dimension (size / 2). Each point
    gets [its d coordinates, sin(pi f x) for every band and dimension, then cos(...)]: the
    layout of the Perceiver papers (arXiv 2103.03206 sec. 3.2) and of transformers'
    ``generate_fourier_features``, so the two agree channel for channel.
    """
    axes = [torch.linspace(-1.0, 1.0, n) for n in index_dims]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*index_dims, d)
    pos = pos.reshape(-1, len(index_dims))  # (P, d)
    bands = torch.stack([torch.linspace(1.0, n / 2, num_bands) for n in index_dims])  # (d, K)
    angles = pos[:, :, None] * bands[None]  # (P, d, K)
    angles = angles.reshape(pos.shape[0], -1)  # (P, d * K), dimension-major
    return torch.cat([pos, torch.sin(math.pi * angles), torch.cos(math.pi * angles)], dim=-1)


def fourier_channels(n_dims: int, num_bands: int) -> int:
    return n_dims * (2 * num_bands + 1)


class Attention(nn.Module):
    """Multi-head attention: queries (B, Nq, q_dim) read keys/values (B, Nk, kv_dim).

    Q and K are projected to ``qk_channels``, V to ``v_channels`` (split over the heads), and
    the result back to ``q_dim``. Scores are scaled by 1/sqrt(qk channels per head).
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int,
        qk_channels: int,
        v_channels: int,
        n_heads: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        for name, channels in (("qk_channels", qk_channels), ("v_channels", v_channels)):
            if channels % n_heads:
                raise ValueError(f"{name}={channels} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.query = nn.Linear(q_dim, qk_channels)
        self.key = nn.Linear(kv_dim, qk_channels)
        self.value = nn.Linear(kv_dim, v_channels)
        self.proj = nn.Linear(v_channels, q_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, q_in: torch.Tensor, kv_in: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """key_mask: (B, Nk), 1/True for keys that may be attended to. Returns (B, Nq, q_dim)."""
        B, Nq, _ = q_in.shape
        Nk, H = kv_in.shape[1], self.n_heads
        q = self.query(q_in).view(B, Nq, H, -1).transpose(1, 2)  # (B, H, Nq, qk/H)
        k = self.key(kv_in).view(B, Nk, H, -1).transpose(1, 2)  # (B, H, Nk, qk/H)
        v = self.value(kv_in).view(B, Nk, H, -1).transpose(1, 2)  # (B, H, Nk, v/H)
        bias = None
        if key_mask is not None:
            # Padding keys get the smallest finite score, not -inf: a row of padding only
            # (an empty input) then averages instead of producing NaN.
            keep = key_mask.bool()[:, None, None, :]  # (B, 1, 1, Nk)
            bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~keep, torch.finfo(q.dtype).min)
        # PyTorch's fused kernel (flash / memory-efficient on GPUs): softmax(q k^T /
        # sqrt(qk/H) + bias) v, with the attention dropout in training
        p = self.dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, Nq, -1)  # (B, Nq, v)
        return self.proj(y)  # (B, Nq, q_dim)


class MLP(nn.Module):
    """Two-layer GELU MLP, ``widening`` x wider in the middle (the paper's attention module)."""

    def __init__(self, dim: int, widening: int):
        super().__init__()
        self.fc = nn.Linear(dim, widening * dim)
        self.proj = nn.Linear(widening * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Layer(nn.Module):
    """One attention block, pre-LayerNorm: ``x = attn(LN(x), LN(kv)) [+ x]; x = x + MLP(LN(x))``.

    A cross-attention block when ``kv_dim`` is given (its keys/values get their own LayerNorm),
    else a self-attention block. ``query_residual=False`` drops the first residual, for
    decoders whose queries and outputs mean different things (paper sec. 3.2).
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int | None,
        n_heads: int,
        qk_channels: int,
        v_channels: int,
        widening: int,
        query_residual: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.ln_q = nn.LayerNorm(q_dim)
        self.ln_kv = nn.LayerNorm(kv_dim) if kv_dim is not None else None
        self.attn = Attention(
            q_dim, kv_dim or q_dim, qk_channels, v_channels, n_heads, dropout=dropout
        )
        self.query_residual = query_residual
        self.ln_mlp = nn.LayerNorm(q_dim)
        self.mlp = MLP(q_dim, widening)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | None = None,
        kv_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = self.ln_q(x)  # (B, Nq, q_dim)
        kv = q if self.ln_kv is None else self.ln_kv(kv)  # (B, Nk, kv_dim)
        h = self.attn(q, kv, kv_mask)  # (B, Nq, q_dim)
        if self.query_residual:
            h = h + x
        return h + self.mlp(self.ln_mlp(h))

    def flops(self, n_q: int, n_kv: int) -> int:
        """Multiply-adds x 2 of the matrix products for n_q queries over n_kv keys (norms,
        softmax and GELU, which are linear in the sizes and small, are not counted)."""
        a = self.attn
        q_dim, kv_dim = a.query.in_features, a.key.in_features
        qk, v = a.query.out_features, a.value.out_features
        macs = (
            n_q * q_dim * qk  # Q projection
            + n_kv * kv_dim * (qk + v)  # K and V projections
            + n_q * n_kv * (qk + v)  # scores and the weighted sum
            + n_q * v * q_dim  # output projection
            + 2 * n_q * q_dim * self.mlp.fc.out_features  # MLP
        )
        return 2 * macs


@dataclass
class PerceiverIOArch:
    """Sizes and options of a Perceiver (IO). Defaults are small, for the CPU task suite;
    DeepMind's checkpoints bring their own (unicomp.models.perceiver_pretrained)."""

    num_latents: int = 32  # N, latent array length (paper sec. 3.1)
    d_latent: int = 64  # D, latent channels
    d_model: int | None = None  # C, input feature channels (None: D, plus Fourier features)
    num_blocks: int = 2  # repeats of the block of latent self-attention layers
    self_attends_per_block: int = 2  # latent self-attention layers in one block
    share_weights: bool = True  # the repeats share one block's weights (Perceiver sec. 3.1)
    self_heads: int = 4  # heads of the latent self-attention
    cross_heads: int = 1  # heads of the encoder's cross-attention
    decoder_heads: int = 1  # heads of the decoder's cross-attention
    qk_channels: int | None = None  # Q/K channels (None: see ``cross_qk``; self: D)
    v_channels: int | None = None  # V channels (None: the Q/K channels)
    # Cross-attention Q/K channels when qk_channels is unset: "q", the query width (D in the
    # encoder, E in the decoder), or "kv", the key width (C / D). transformers defaults to
    # "kv" (checkpoints set it); we default to "q" because C with concatenated Fourier
    # features is an odd width (e.g. 64 + 33) that attention heads cannot split.
    cross_qk: str = "q"
    self_widening: int = 1  # MLP widening of the self-attention layers
    cross_widening: int = 1  # MLP widening of the encoder's cross-attention layer
    decoder_widening: int = 1  # MLP widening of the decoder's cross-attention layer
    query_residual: bool = True  # encoder cross-attention adds its query (the latents)
    decoder_query_residual: bool = False  # decoder cross-attention adds its query
    decoder: str = "query"  # "query": Perceiver IO decoder; "pool": plain Perceiver
    queries: str = "auto"  # output queries: auto | learned | fourier | single | inputs
    d_query: int | None = None  # E, output query channels (None: d_latent)
    input_pos: str = "fourier"  # input positions: fourier (concatenated) | learned (added)
    num_bands: int = 16  # Fourier frequency bands, for input_pos / queries "fourier"
    dropout: float = 0.0  # dropout on attention probabilities


class PerceiverIO(nn.Module):
    """forward(x, mask) -> logits, the call convention of every unicomp model.

    x: (B, T, d_in) float vector tokens, or (B, T) long token ids.
    mask: (B, T), 1 for real tokens, 0 for padding (never attended to); None means all real.
    Returns (B, d_out) for classification (``spec.n_out_tokens`` None), or (B, n_out, d_out)
    with one output query per output token.

    ``in_grid``/``out_grid``: the shape of the input/output index space for Fourier features
    (e.g. (8, 8) for an 8x8 image); default one dimension (T,) / (n_out,).
    """

    def __init__(
        self,
        spec: TaskSpec,
        arch: PerceiverIOArch | None = None,
        in_grid: tuple[int, ...] | None = None,
        out_grid: tuple[int, ...] | None = None,
    ):
        super().__init__()
        a = arch or PerceiverIOArch()
        self.spec, self.arch = spec, a
        for field, value, choices in (
            ("decoder", a.decoder, DECODERS),
            ("queries", a.queries, QUERIES),
            ("input_pos", a.input_pos, INPUT_POSITIONS),
            ("cross_qk", a.cross_qk, ("kv", "q")),
        ):
            if value not in choices:
                raise ValueError(f"unknown {field} {value!r}; choices: {', '.join(choices)}")
        D = a.d_latent
        self.n_out = spec.n_out_tokens or 1  # classification: one output
        in_grid = in_grid or (spec.max_len,)
        out_grid = out_grid or (self.n_out,)
        if math.prod(in_grid) != spec.max_len or math.prod(out_grid) != self.n_out:
            raise ValueError(
                f"grids {in_grid} / {out_grid} do not hold {spec.max_len} inputs / "
                f"{self.n_out} outputs"
            )

        # --- input adapter: features of each input token, C channels ------------------------
        if a.input_pos == "learned":
            # A learned table added to the embedding, as the language Perceiver (sec. 4.1).
            C = d_embed = a.d_model or D
            self.pos = nn.Embedding(spec.max_len, C)
            nn.init.normal_(self.pos.weight, std=0.02)
        else:
            # Fourier features concatenated to the embedding, as for images (sec. 4.4). With
            # d_model unset the embedding gets D channels and the features come on top; a
            # given d_model (a checkpoint's input width) is shared between the two.
            self.pos = None
            n_pos = fourier_channels(len(in_grid), a.num_bands)
            C = a.d_model or (D + n_pos)
            d_embed = C - n_pos
            if d_embed < 1:
                raise ValueError(
                    f"input Fourier features take {n_pos} channels, no room left of d_model={C}"
                    " (lower num_bands)"
                )
            self.register_buffer("pos_fourier", fourier_features(in_grid, a.num_bands), False)
        self.d_model = C
        if spec.vocab_size is not None:
            self.embed_in: nn.Module = nn.Embedding(spec.vocab_size, d_embed)
        else:
            self.embed_in = nn.Linear(spec.d_in, d_embed)

        # --- encode: the latent array cross-attends to the inputs (sec. 3.1) ----------------
        self.latents = nn.Parameter(torch.randn(a.num_latents, D) * 0.02)  # (N, D)
        cross_qk = a.qk_channels or (C if a.cross_qk == "kv" else D)
        self.encode = Layer(
            D,
            C,
            a.cross_heads,
            cross_qk,
            a.v_channels or cross_qk,
            a.cross_widening,
            query_residual=a.query_residual,
            dropout=a.dropout,
        )

        # --- process: latent self-attention; one block repeated when weights are shared ------
        def block() -> nn.ModuleList:
            qk = a.qk_channels or D
            return nn.ModuleList(
                Layer(
                    D, None, a.self_heads, qk, a.v_channels or qk, a.self_widening, True, a.dropout
                )
                for _ in range(a.self_attends_per_block)
            )

        n_distinct = 1 if a.share_weights else a.num_blocks
        self.process = nn.ModuleList(block() for _ in range(n_distinct))

        # --- decode ---------------------------------------------------------------------------
        if a.decoder == "pool":
            # Plain Perceiver: average the latents, one linear head. For sequence outputs the
            # head emits all of them at once from that one vector (flat-head baseline).
            self.queries_kind = "none"
            self.head = nn.Linear(D, self.n_out * spec.d_out)
            return
        kind = a.queries
        if kind == "auto":
            kind = "single" if spec.n_out_tokens is None else "learned"
        if kind == "single" and spec.n_out_tokens is not None:
            raise ValueError(
                f"queries='single' gives one output; this task has {spec.n_out_tokens} output "
                "tokens (use learned, fourier or inputs)"
            )
        if kind == "inputs" and spec.n_out_tokens is None:
            raise ValueError("queries='inputs' needs per-token outputs; use single or learned")
        self.queries_kind = kind
        E = a.d_query or D
        if kind in ("learned", "single"):
            # One learned query per output position (one in all for classification), sec. 3.2.
            self.queries = nn.Parameter(torch.randn(self.n_out, E) * 0.02)  # (O, E)
        elif kind == "fourier":
            # Fourier features of the output positions, projected to E channels (sec. 3.2).
            fourier = fourier_features(out_grid, a.num_bands)  # (O, F)
            self.register_buffer("query_fourier", fourier, False)
            self.query_proj = nn.Linear(fourier.shape[1], E)
        else:
            # The features of the inputs themselves, read at the last n_out input positions
            # (where FPT reads its outputs), projected: the queries of optical flow (sec. 4.2).
            self.query_proj = nn.Linear(C, E)
        dec_qk = a.qk_channels or (D if a.cross_qk == "kv" else E)
        self.decode = Layer(
            E,
            D,
            a.decoder_heads,
            dec_qk,
            a.v_channels or dec_qk,
            a.decoder_widening,
            query_residual=a.decoder_query_residual,
            dropout=a.dropout,
        )
        self.head = nn.Linear(E, spec.d_out)

    def input_features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's inputs: (B, T, C)."""
        T = x.shape[1]
        h = self.embed_in(x)  # (B, T, C) or (B, T, C - F)
        if self.pos is not None:
            return h + self.pos(torch.arange(T, device=h.device))  # (T, C) broadcast
        pos = self.pos_fourier[:T].to(h.dtype).expand(h.shape[0], -1, -1)  # (B, T, F)
        return torch.cat([h, pos], dim=-1)  # (B, T, C)

    def encode_process(self, inputs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """inputs (B, T, C) -> latents (B, N, D)."""
        z = self.latents.expand(inputs.shape[0], -1, -1)  # (B, N, D)
        z = self.encode(z, inputs, mask)  # (B, N, D)
        for b in range(self.arch.num_blocks):
            for layer in self.process[0 if self.arch.share_weights else b]:
                z = layer(z)  # (B, N, D)
        return z

    def output_queries(self, inputs: torch.Tensor) -> torch.Tensor:
        """The decoder's query array: (B, O, E)."""
        B = inputs.shape[0]
        if self.queries_kind == "fourier":
            q = self.query_proj(self.query_fourier.to(inputs.dtype))  # (O, E)
        elif self.queries_kind == "inputs":
            return self.query_proj(inputs[:, -self.n_out :])  # (B, O, E)
        else:
            q = self.queries  # (O, E)
        return q.expand(B, -1, -1)  # (B, O, E)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        inputs = self.input_features(x)  # (B, T, C)
        z = self.encode_process(inputs, mask)  # (B, N, D)
        if self.queries_kind == "none":
            out = self.head(z.mean(dim=1))  # (B, O * d_out)
            out = out.view(-1, self.n_out, self.spec.d_out)  # (B, O, d_out)
        else:
            q = self.output_queries(inputs)  # (B, O, E)
            out = self.head(self.decode(q, z))  # (B, O, d_out)
        return out if self.spec.n_out_tokens else out[:, 0]  # (B, d_out) for classification

    def flops_per_example(self, n_inputs: int | None = None) -> int:
        """Forward-pass FLOPs of one example with ``n_inputs`` tokens (default max_len):
        2 x the multiply-adds of every matrix product (norms, softmax, GELU not counted)."""
        T = n_inputs or self.spec.max_len
        N, n_out = self.latents.shape[0], self.n_out
        flops = 0
        if isinstance(self.embed_in, nn.Linear):
            flops += 2 * T * self.embed_in.in_features * self.embed_in.out_features
        flops += self.encode.flops(N, T)
        for b in range(self.arch.num_blocks):
            for layer in self.process[0 if self.arch.share_weights else b]:
                flops += layer.flops(N, N)
        if self.queries_kind == "none":
            return flops + 2 * self.head.in_features * self.head.out_features
        if self.queries_kind in ("fourier", "inputs"):
            flops += 2 * n_out * self.query_proj.in_features * self.query_proj.out_features
        flops += self.decode.flops(n_out, N)
        return flops + 2 * n_out * self.head.in_features * self.head.out_features
