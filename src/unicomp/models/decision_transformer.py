"""The Decision Transformer (Chen et al. 2021, arXiv 2106.01345, sec. 3).

A trajectory of K steps is the token sequence (R_1, s_1, a_1, R_2, s_2, a_2, ...), 3K tokens:
R is the return-to-go, s the state, a the action. Each modality has its own linear embedding
(a small conv net for image states), and a learned embedding of the episode timestep is
added to all three tokens of a step. A causal GPT-2 reads the sequence; the action a_t is
predicted from the output at s_t's token, which by causality has seen R_1..R_t, s_1..s_t and
a_1..a_{t-1}.

    returns_to_go (B, K, 1) --embed_return--+
    states        (B, K, obs) --embed_state--+ + embed_timestep(timesteps) -> interleave
    actions       (B, K, act) --embed_action-+    -> (B, 3K, H) -> LayerNorm -> GPT-2 (no
                                                     positions) -> state tokens -> head

Read bottom-up: ``DecisionTransformer.forward`` for training, ``start``/``step``/
``record_action`` for acting with a key/value cache. Acting runs the same GPT-2 blocks through
``_act_backbone``, a lean forward of our own (the same function; tested against ``forward``):
it keeps keys/values as plain tensors and, since acting reads only the last token's output,
runs the last layer's queries, attention output and MLP on that token alone.

Against the official code (github.com/kzl/decision-transformer, gym/):
* Same: per-modality linear embeddings, the timestep table of size max_ep_len, the LayerNorm
  on the stacked embeddings, GPT-2 with n_inner = 4H, ReLU, dropout on embeddings, attention
  and residuals; a tanh head for continuous actions; the action read from the state token.
* The official code ships its own copy of GPT-2 with the position embedding deleted; we use
  transformers' GPT2Model and replace its position table by zeros (``_NoPositions``), which
  is the same function.
* Its state and return prediction heads are dropped: the paper's loss uses actions only.
* Atari (its atari/ folder, a minGPT model): there the return and action embeddings pass
  through tanh, positions are a global timestep table plus a learned within-context table,
  and actions are an embedding table. We use the gym design for both (one-hot actions into
  a linear layer is the same as an embedding table); the conv encoder is the Atari one
  (Nature-DQN layers, then a linear layer and tanh).
* ``use_returns=False`` drops the return tokens: 2K tokens (s_1, a_1, s_2, ...), the same
  network otherwise. It is our behaviour-cloning baseline "the DT without returns-to-go"
  (unicomp.models.policies); the official gym code's BC is an MLP instead (also offered there).

A pretrained backbone (``backbone``: any name ``unicomp.backbones.loading.load_backbone``
takes that gives a :class:`~unicomp.backbones.base.Transformer`, e.g. minilm-l6, smollm2-135m,
random:minilm-l6; loaded by :func:`decision_transformer` outside the model, as the FPT's is)
replaces the GPT-2 built from n_layer/n_head/hidden_size: the FPT recipe applied to the DT
(no DT implementation offers it; Reid et al. 2022 found language-pretrained initialisation
helps offline RL). Its width is the DT's width;
the DT's embeddings, embedding LayerNorm and head are new and count as the ``input`` and
``output`` groups of ``unicomp.freezing`` (``new_module_groups``), so ``freeze`` policies mean
what they mean for the FPT (``paper``: those, the norms and the backbone's position table
train). The DT builds the attention mask itself (causal and padding, 4-D): that makes an
encoder (BERT) causal and equals a decoder's own. Positions: the timestep embedding is added
as above, and the backbone's own position table (GPT-2, BERT; cut to the 3K token positions)
or rotary positions (Llama) also apply over the token positions, counted from the first real
token so that left padding in training and a short context in acting agree. Acting recomputes
the window at every step (no key/value cache: ``_act_backbone`` is written for GPT-2 blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from unicomp.backbones.base import LoadedBackbone, Transformer, fit_positions
from unicomp.errors import UnicompError


@dataclass
class DecisionTransformerConfig:
    """Sizes and settings of the model. ``gym()`` and ``atari()`` give the paper's presets."""

    state_dim: int  # values per state (vector states); ignored for images
    act_dim: int  # values per action, or the number of actions (discrete)
    discrete: bool = False  # discrete actions: one-hot inputs, logits out
    hidden_size: int = 128
    n_layer: int = 3
    n_head: int = 1
    max_length: int = 20  # K, the context in timesteps
    max_ep_len: int = 1000  # rows of the timestep table; later timesteps reuse the last row
    dropout: float = 0.1
    activation: str = "relu"
    action_tanh: bool = True  # continuous actions in [-1, 1], as the gym tasks' bounds
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) for image states
    attn_implementation: str | None = None  # "eager" | "sdpa"; None = transformers' default
    use_returns: bool = True  # False: no return-to-go tokens (a behaviour-cloning baseline)
    extra: dict = field(default_factory=dict)  # further GPT2Config fields
    # A pretrained backbone instead of the GPT-2 above (module docstring); None: that GPT-2.
    backbone: str | None = None
    freeze: str = "full"  # freeze policy (unicomp.freezing) of a backbone DT
    backbone_seed: int = 0  # seeds random:/stats: backbones (rebuilt alike when reloaded)

    @property
    def tokens_per_step(self) -> int:
        return 3 if self.use_returns else 2

    @classmethod
    def gym(cls, state_dim: int, act_dim: int, **kw) -> DecisionTransformerConfig:
        """Paper appendix A (OpenAI Gym): 3 layers, 1 head, width 128, K = 20."""
        return cls(state_dim=state_dim, act_dim=act_dim, **kw)

    @classmethod
    def atari(
        cls, image_shape: tuple[int, int, int], n_actions: int, **kw
    ) -> DecisionTransformerConfig:
        """Paper appendix A (Atari): 6 layers, 8 heads, width 128, K = 30, discrete actions."""
        base = dict(n_layer=6, n_head=8, max_length=30, max_ep_len=10_000, action_tanh=False)
        return cls(
            state_dim=0,
            act_dim=n_actions,
            discrete=True,
            image_shape=tuple(image_shape),
            **{**base, **kw},
        )


class _NoPositions(nn.Module):
    """Stands in for GPT-2's position table: the DT adds timestep embeddings itself (one per
    step, shared by its three tokens), so the backbone must not add positions of its own."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*position_ids.shape, self.hidden, device=position_ids.device)


class ConvEncoder(nn.Module):
    """Image state -> embedding: the Atari DT's encoder (Nature-DQN convs, linear, tanh).
    Input (N, C, H, W) floats (scale uint8 frames to [0, 1] before). Images too small for
    the Nature convs (under 36 pixels a side: MinAtar's 10 x 10 grids) get MinAtar's own
    network's convolution instead (Young and Tian 2019: 16 filters of 3 x 3, stride 1), then
    the same linear layer and tanh."""

    NATURE_MIN_SIDE = 36  # 8x8 stride 4, 4x4 stride 2, 3x3 stride 1 leave one pixel at 36

    def __init__(self, image_shape: tuple[int, int, int], hidden: int):
        super().__init__()
        c = image_shape[0]
        if min(image_shape[1:]) < self.NATURE_MIN_SIDE:
            self.convs = nn.Sequential(nn.Conv2d(c, 16, 3, stride=1), nn.ReLU(), nn.Flatten())
        else:
            self.convs = nn.Sequential(
                nn.Conv2d(c, 32, 8, stride=4),
                nn.ReLU(),
                nn.Conv2d(32, 64, 4, stride=2),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=1),
                nn.ReLU(),
                nn.Flatten(),
            )
        with torch.no_grad():
            n_flat = self.convs(torch.zeros(1, *image_shape)).shape[1]
        self.proj = nn.Sequential(nn.Linear(n_flat, hidden), nn.Tanh())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(images))


def one_hot_actions(ids: torch.Tensor, n: int) -> torch.Tensor:
    """(...,) action ids -> (..., n) float one-hot, on ids' device. Not ``F.one_hot``, which
    reads the ids' range on the host (a sync per call on a GPU)."""
    return (ids.long()[..., None] == torch.arange(n, device=ids.device)).float()


class KVCache:
    """Keys and values of the tokens fed so far, per layer, in buffers of shape (B, heads,
    capacity, head_dim) written in place: tokens ``start`` .. ``end - 1`` are live. New
    tokens are written after ``end``; dropping the oldest moves ``start``; when the buffer is
    full the live tokens move back to its front (or it grows). Concatenating the cache at
    every step instead allocated and copied it all, a third of a rolling step's time."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.start = self.end = 0

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) of the live tokens, per layer: (B, heads, tokens, head_dim) views."""
        return [
            (k[:, :, self.start : self.end], v[:, :, self.start : self.end])
            for k, v in zip(self.keys, self.values, strict=True)
        ]

    def get_seq_length(self) -> int:
        return self.end - self.start

    def drop_oldest(self, n_tokens: int) -> None:
        self.start = min(self.start + n_tokens, self.end)

    def reserve(self, n_tokens: int) -> None:
        """Make room for ``n_tokens`` new tokens after ``end``."""
        if self.end + n_tokens <= self.capacity:
            return
        live = self.end - self.start
        if live + n_tokens > self.capacity:
            self.capacity = 2 * (live + n_tokens)
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                kept = old[:, :, self.start : self.end].clone()
                if old.shape[2] != self.capacity:
                    shape = (*old.shape[:2], self.capacity, old.shape[3])
                    buffers[i] = old = old.new_empty(shape)
                old[:, :, :live] = kept
        self.start, self.end = 0, live

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        """Write the new tokens' keys/values (B, heads, n, head_dim) of ``layer`` after the
        live ones (``reserve`` first); returns keys/values of the live and new tokens. Call
        ``advance(n)`` once every layer has its new tokens."""
        if layer == len(self.keys):  # first call: buffers in the keys' dtype and device
            shape = (*keys.shape[:2], self.capacity, keys.shape[3])
            self.keys.append(keys.new_empty(shape))
            self.values.append(values.new_empty(shape))
        end = self.end + keys.shape[2]
        self.keys[layer][:, :, self.end : end] = keys
        self.values[layer][:, :, self.end : end] = values
        return self.keys[layer][:, :, self.start : end], self.values[layer][:, :, self.start : end]

    def advance(self, n_tokens: int) -> None:
        self.end += n_tokens


@dataclass
class DTRollout:
    """Acting state for a batch of B episodes that advance in lockstep.

    ``window``: "exact" or "rolling" (see ``DecisionTransformer.step``). The history keeps
    the last K steps' inputs for recomputation; ``cache`` holds the backbone's keys/values of
    the tokens fed so far; ``pending`` is the last action, fed with the next step's tokens."""

    window: str
    rtg: list[torch.Tensor] = field(default_factory=list)  # K x (B, 1)
    states: list[torch.Tensor] = field(default_factory=list)  # K x (B, H): state embeddings
    actions: list[torch.Tensor] = field(default_factory=list)  # K x (B, act)
    timesteps: list[torch.Tensor] = field(default_factory=list)  # K x (B,)
    cache: KVCache | None = None
    cached_steps: int = 0  # steps whose tokens are in the cache
    pending: bool = False  # the last step's action is known but not yet in the cache
    sliding: bool = False  # exact mode past K steps: recompute every step
    weights: tuple | None = None  # what the backbone reads (DecisionTransformer._act_weights)


class DecisionTransformer(nn.Module):
    """forward(x, mask) -> predicted actions.

    x: dict of "returns_to_go" (B, K, 1) float, "states" (B, K, obs) or (B, K, C, H, W)
    float, "actions" (B, K, act) float (one-hot for discrete), "timesteps" (B, K) long.
    mask: (B, K), 1 for real steps and 0 for padding (left padding); None means all real.
    Returns (B, K, act): actions in [-1, 1] (tanh head) or logits (discrete).
    """

    # unicomp.freezing.parameter_groups: the DT's own modules are its input and output layers.
    new_module_groups = {
        **dict.fromkeys(
            ("embed_timestep", "embed_return", "embed_state", "embed_action", "embed_ln"), "input"
        ),
        "predict_action": "output",
    }

    def __init__(self, config: DecisionTransformerConfig, backbone: LoadedBackbone | None = None):
        super().__init__()
        self.config = c = config
        self.trainable_by_group: dict[str, int] | None = None  # a backbone DT's, by group
        self.positions: str | None = None  # a backbone DT's position table, described
        if c.backbone:
            if backbone is None:
                raise ValueError(
                    f"config names backbone {c.backbone!r}: pass it loaded, or build the "
                    "model with decision_transformer(config)"
                )
            self.transformer = self._fit_backbone(backbone)  # sets c.hidden_size to its width
        else:
            self.transformer = _gpt2(c)
        h = c.hidden_size

        self.embed_timestep = nn.Embedding(c.max_ep_len, h)
        self.embed_return = nn.Linear(1, h) if c.use_returns else None
        if c.image_shape is not None:
            self.embed_state: nn.Module = ConvEncoder(c.image_shape, h)
        else:
            self.embed_state = nn.Linear(c.state_dim, h)
        self.embed_action = nn.Linear(c.act_dim, h)
        self.embed_ln = nn.LayerNorm(h)
        head: list[nn.Module] = [nn.Linear(h, c.act_dim)]
        if c.action_tanh and not c.discrete:
            head.append(nn.Tanh())
        self.predict_action = nn.Sequential(*head)

    def _fit_backbone(self, backbone: LoadedBackbone) -> LoadedBackbone:
        """The loaded ``backbone`` with its position table cut to the 3K token positions; the
        config's width, layers and heads set to the backbone's."""
        c = self.config
        if not isinstance(backbone, Transformer):
            raise UnicompError(f"backbone {c.backbone!r}: the DT needs a transformer backbone")
        self.positions = fit_positions(backbone, c.tokens_per_step * c.max_length) or "none"
        c.hidden_size = backbone.hidden_size
        c.n_layer = backbone.num_layers
        c.n_head = backbone.num_heads
        return backbone

    # --- embeddings ----------------------------------------------------------------------------
    def _embed_states(self, states: torch.Tensor) -> torch.Tensor:
        if states.dtype == torch.uint8:  # image frames come as uint8, scaled here on the device
            states = states.float() / 255.0
        if self.config.image_shape is None:
            return self.embed_state(states)
        lead = states.shape[:-3]
        flat = self.embed_state(states.reshape(-1, *states.shape[-3:]))  # (N, H)
        return flat.reshape(*lead, -1)

    def _embed_steps(self, rtg, states, actions, timesteps, embedded: bool = False):
        """(R, s, a) token embeddings of each step, timestep embedding added: 3 x (B, T, H)
        (R is None without return tokens). ``embedded``: ``states`` are state embeddings."""
        time = self.embed_timestep(timesteps)  # (B, T, H)
        return (
            None if self.embed_return is None else self.embed_return(rtg) + time,
            (states if embedded else self._embed_states(states)) + time,
            self.embed_action(actions) + time,
        )

    def _backbone(self, tokens: torch.Tensor, attention_mask=None) -> torch.Tensor:
        tokens = self.embed_ln(tokens)
        if self.config.backbone:
            return self._pretrained_backbone(tokens, attention_mask)
        out = self.transformer(inputs_embeds=tokens, attention_mask=attention_mask)
        return out.last_hidden_state

    def _pretrained_backbone(self, tokens: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """A pretrained backbone (a ``Transformer``) on ``tokens`` (B, T, H) with ``attention_mask``
        (B, T) of 1 for real tokens (None: all real), under a 4-D causal and padding mask
        built here (an encoder would otherwise attend both ways). A padding token also sees
        itself, so no row of the mask is empty. Positions count from the first real token."""
        B, T, _ = tokens.shape
        if attention_mask is None:
            real = torch.ones(B, T, dtype=torch.bool, device=tokens.device)
        else:
            real = attention_mask.bool()
        causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
        eye = torch.eye(T, dtype=torch.bool, device=tokens.device)
        allowed = causal & (real[:, None, :] | eye)  # (B, T queries, T keys)
        mask = torch.zeros(B, 1, T, T, dtype=tokens.dtype, device=tokens.device)
        mask.masked_fill_(~allowed[:, None], torch.finfo(tokens.dtype).min)
        positions = (real.long().cumsum(1) - 1).clamp_min(0)
        return self.transformer.run(tokens, mask, position_ids=positions).last_hidden_state

    def _act_weights(self) -> tuple:
        """What ``_act_backbone`` reads, per block and for the final LayerNorm: looked up once
        per rollout, since module attribute lookups cost as much as some of a step's
        arithmetic. (References to the parameters, not copies: updates in place show.)"""
        blocks = []
        for block in self.transformer.h:
            attn, mlp, ln_1, ln_2 = block.attn, block.mlp, block.ln_1, block.ln_2
            blocks.append(
                (
                    (ln_1.weight, ln_1.bias, ln_1.eps),
                    (attn.c_attn.weight, attn.c_attn.bias, attn.num_heads),
                    _attention_scale(attn),
                    (attn.c_proj.weight, attn.c_proj.bias),
                    (ln_2.weight, ln_2.bias, ln_2.eps),
                    (mlp.c_fc.weight, mlp.c_fc.bias, mlp.act, mlp.c_proj.weight, mlp.c_proj.bias),
                    (attn.attn_dropout.p, attn.resid_dropout.p, mlp.dropout.p),
                )
            )
        ln_f = self.transformer.ln_f
        return blocks, (ln_f.weight, ln_f.bias, ln_f.eps)

    def _act_backbone(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        keep: bool = True,
        weights: tuple | None = None,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """The backbone for acting: ``tokens`` (B, T, H) follow the cached ones; returns the
        last token's output (B, H) and the cache, extended in place with every new token's
        keys/values (a new one if ``cache`` is None; none if ``keep`` is False).

        The same function as ``self.transformer`` (GPT-2 blocks: pre-LayerNorm, causal
        attention, MLP; the final LayerNorm) with the blocks' own weights, written out as
        plain tensor operations: for the few tokens of a step, transformers' module calls,
        cache and mask objects cost more than the arithmetic. Only the last token's output is
        wanted, so the last layer computes keys and values of every token but queries,
        attention output and MLP for the last one only.
        """
        train = self.training
        h = self.embed_ln(tokens)
        if train:
            h = self.transformer.drop(h)
        B, T, H = h.shape
        h = h.reshape(B * T, H)  # one row per token
        if keep and cache is None:
            cache = KVCache(2 * self.config.tokens_per_step * self.config.max_length)
        if cache is not None:
            cache.reserve(T)
        past = 0 if cache is None else cache.get_seq_length()
        # causal: new token j (position past + j) sees keys 0 .. past + j
        mask = None
        if T > 1:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=h.device).tril(past)
        blocks, ln_f = weights if weights is not None else self._act_weights()
        last = len(blocks) - 1
        for i, (ln_1, qkv_w, scale, proj, ln_2, mlp, drop) in enumerate(blocks):
            a = F.layer_norm(h, (H,), *ln_1)
            qkv = torch.addmm(qkv_w[1], a, qkv_w[0])  # Conv1D: x W + b
            heads = qkv_w[2]
            # 3 x (B, heads, T, head_dim)
            q, k, v = qkv.view(B, T, 3, heads, H // heads).permute(2, 0, 3, 1, 4).unbind(0)
            if cache is not None:
                k, v = cache.append(i, k, v)
            n_q, m = T, mask
            if i == last:  # the last token only: it sees every key
                q, h, n_q, m = q[:, :, -1:], h.view(B, T, H)[:, -1], 1, None
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=m, dropout_p=drop[0] if train else 0.0, scale=scale
            )
            o = torch.addmm(proj[1], o.transpose(1, 2).reshape(B * n_q, H), proj[0])
            h = h + (F.dropout(o, drop[1], True) if train else o)
            a = F.layer_norm(h, (H,), *ln_2)
            f = torch.addmm(mlp[4], mlp[2](torch.addmm(mlp[1], a, mlp[0])), mlp[3])
            h = h + (F.dropout(f, drop[2], True) if train else f)
        if cache is not None:
            cache.advance(T)
        return F.layer_norm(h, (H,), *ln_f), cache

    # --- training --------------------------------------------------------------------------------
    def forward(self, x: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        rtg, states, actions, timesteps = (
            x["returns_to_go"],
            x["states"],
            x["actions"],
            x["timesteps"],
        )
        B, K = timesteps.shape
        r, s, a = self._embed_steps(rtg, states, actions, timesteps)  # 3 x (B, K, H)
        per = self.config.tokens_per_step
        parts = (r, s, a) if r is not None else (s, a)
        tokens = torch.stack(parts, dim=2).reshape(B, per * K, -1)  # (B, 3K, H): R1 s1 a1 R2..
        attn = None
        if mask is not None:
            attn = mask.to(torch.long).repeat_interleave(per, dim=1)  # (B, 3K), per token
        hidden = self._backbone(tokens, attn)  # (B, 3K, H)
        state_tokens = hidden.reshape(B, K, per, -1)[:, :, per - 2]  # (B, K, H)
        return self.predict_action(state_tokens)

    # --- acting, with a key/value cache -----------------------------------------------------------
    def start(self, batch_size: int, window: str = "exact") -> DTRollout:
        """Begin acting in ``batch_size`` episodes that advance in lockstep.

        window="exact" (default): while an episode has run at most K steps, each step feeds
        only its new tokens through the cache; that equals recomputing the whole context
        (tested). Once the context would exceed K steps, every step recomputes the last K
        steps from scratch, as the official code does at every step: with absolute timestep
        embeddings and K steps of context in training, the hidden states of the tokens kept
        in the window depend on what was dropped, so no cache can be reused exactly.
        window="rolling": keep the cache and drop the oldest step's 3 tokens when it would
        exceed K steps. Each step then costs 3 new tokens, but the kept keys/values were
        computed with older context in view, which the model never saw in training: an
        approximation (Transformer-XL-like), faster for long episodes. Measure before use.
        """
        if window not in ("exact", "rolling"):
            raise ValueError(f"window must be 'exact' or 'rolling', got {window!r}")
        if self.config.backbone:  # no cache: the window is recomputed at every step
            return DTRollout(window=window, sliding=True)
        return DTRollout(window=window, weights=self._act_weights())

    @torch.no_grad()
    def step(
        self,
        rollout: DTRollout,
        returns_to_go: torch.Tensor,
        state: torch.Tensor,
        timestep: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the action of the next step from its return-to-go (B, 1), state (B, *obs)
        and timestep (B,) long. Returns (B, act) (actions or logits). Call
        ``record_action`` with the action taken before the next ``step``."""
        if rollout.rtg and not rollout.pending:
            raise RuntimeError("record_action must be called between two steps")
        K = self.config.max_length
        rollout.rtg.append(returns_to_go)
        # Each state is embedded once (an image's conv encoder is most of an Atari step's
        # cost); the window recomputed past K steps reuses the embeddings.
        rollout.states.append(self._embed_states(state))
        # A placeholder for this step's action: causal attention keeps it out of the
        # prediction (the official code feeds zeros the same way).
        rollout.actions.append(torch.zeros(len(state), self.config.act_dim, device=state.device))
        rollout.timesteps.append(timestep)
        if len(rollout.rtg) > K:
            for hist in (rollout.rtg, rollout.states, rollout.actions, rollout.timesteps):
                del hist[0]
            if rollout.window == "exact":
                rollout.sliding, rollout.cache = True, None
        if rollout.sliding:
            return self._recompute(rollout)
        return self._step_cached(rollout)

    def record_action(self, rollout: DTRollout, action: torch.Tensor) -> None:
        """The action taken at the last step: (B, act) floats, or (B,) ids if discrete."""
        if self.config.discrete and action.dim() == 1:
            action = one_hot_actions(action, self.config.act_dim)
        rollout.actions[-1] = action.float()
        rollout.pending = True

    def _recompute(self, rollout: DTRollout) -> torch.Tensor:
        """The last K steps from scratch: what ``forward`` gives at the last state token."""
        r, s, a = self._embed_steps(
            torch.stack(rollout.rtg, 1),  # (B, K, 1)
            torch.stack(rollout.states, 1),  # (B, K, H) state embeddings
            torch.stack(rollout.actions, 1),  # (B, K, act)
            torch.stack(rollout.timesteps, 1),  # (B, K)
            embedded=True,
        )
        parts = (r, s, a) if r is not None else (s, a)
        B, K = s.shape[:2]
        tokens = torch.stack(parts, dim=2).reshape(B, len(parts) * K, -1)
        # The last token is this step's action placeholder, after the state token whose output
        # is the prediction: causal attention never lets it in, so it is left out.
        if self.config.backbone:
            hidden = self._backbone(tokens[:, :-1])[:, -1]
        else:
            hidden, _ = self._act_backbone(tokens[:, :-1], keep=False, weights=rollout.weights)
        rollout.pending = False
        return self.predict_action(hidden)

    def _step_cached(self, rollout: DTRollout) -> torch.Tensor:
        r, s, _ = self._embed_steps(
            rollout.rtg[-1][:, None],
            rollout.states[-1][:, None],
            rollout.actions[-1][:, None],
            rollout.timesteps[-1][:, None],
            embedded=True,
        )  # 3 x (B, 1, H)
        new = [r, s] if r is not None else [s]
        if rollout.pending:
            # The previous step's action token joins this call: one backbone call per step.
            prev = len(rollout.rtg) - 2
            a_prev = self.embed_action(rollout.actions[prev][:, None]) + self.embed_timestep(
                rollout.timesteps[prev][:, None]
            )
            new = [a_prev, *new]
        if rollout.window == "rolling" and rollout.cached_steps >= self.config.max_length:
            rollout.cache.drop_oldest(self.config.tokens_per_step)  # oldest R, s, a
            rollout.cached_steps -= 1
        tokens = torch.cat(new, dim=1)  # (B, 1 to 3, H)
        hidden, rollout.cache = self._act_backbone(tokens, rollout.cache, weights=rollout.weights)
        rollout.cached_steps += 1
        rollout.pending = False
        return self.predict_action(hidden)  # the state token's output


def _gpt2(c: DecisionTransformerConfig) -> nn.Module:
    """The DT's own GPT-2 (the paper's), random init, without a position table."""
    gpt_cfg = transformers.GPT2Config(
        vocab_size=1,  # no token ids: the model is fed embeddings only
        n_embd=c.hidden_size,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=4 * c.hidden_size,
        activation_function=c.activation,
        n_positions=c.tokens_per_step * c.max_length,
        resid_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        bos_token_id=None,
        eos_token_id=None,
        **({"attn_implementation": c.attn_implementation} if c.attn_implementation else {}),
        **c.extra,
    )
    model = transformers.GPT2Model(gpt_cfg)
    model.wpe = _NoPositions(c.hidden_size)
    model.wte.weight.requires_grad_(False)  # unused (inputs are embeddings)
    return model


def _attention_scale(attn: nn.Module) -> float:
    """GPT-2's attention scale: 1/sqrt(head_dim) (``scale_attn_weights``), further divided by
    the layer number with ``scale_attn_by_inverse_layer_idx``."""
    if hasattr(attn, "scaling"):  # transformers computes it in recent 5.x releases
        return attn.scaling
    scale = attn.head_dim**-0.5 if attn.scale_attn_weights else 1.0
    if attn.scale_attn_by_inverse_layer_idx:
        scale /= float(attn.layer_idx + 1)
    return scale


def decision_transformer(config: DecisionTransformerConfig) -> DecisionTransformer:
    """The DT of ``config``. With a ``backbone``, as the FPT gets its own: loaded by name
    (``unicomp.backbones.loading.load_backbone``, with the DT's dropout and attention, seeded
    by ``backbone_seed``), passed to the model, then the ``freeze`` policy applied (what
    trains, by group, in ``trainable_by_group``)."""
    if not config.backbone:
        return DecisionTransformer(config)
    from unicomp.backbones.catalog import FREEZE_POLICIES
    from unicomp.backbones.loading import load_backbone
    from unicomp.freezing import apply_freeze_policy

    FREEZE_POLICIES.entry(config.freeze)  # fail on a bad name before loading any weights
    backbone = load_backbone(
        config.backbone,
        dropout=config.dropout,
        attn_implementation=config.attn_implementation,
        seed=config.backbone_seed,
    )
    model = DecisionTransformer(config, backbone)
    model.trainable_by_group = apply_freeze_policy(model, config.freeze)
    return model


def build_decision_transformer(
    state_dim: int, act_dim: int, discrete: bool = False, **overrides
) -> DecisionTransformer:
    """The paper's gym model (3 layers, 1 head, width 128) with any field overridden."""
    cfg = DecisionTransformerConfig.gym(state_dim, act_dim, discrete=discrete, **overrides)
    return decision_transformer(cfg)
