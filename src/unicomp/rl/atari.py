"""Atari for the Decision Transformer (paper sec. 5.1): gymnasium's ALE environments with the
paper's preprocessing, reference scores and targets (the DQN Replay Dataset's reader:
``unicomp.rl.dqn_replay``).

Environments. Any ``ALE/<Game>-v5`` id (or a short name: ``breakout``, ``Pong``) is made by
``make_atari_env``: ale-py's environment with sticky actions off (repeat_action_probability
0, as in the DT's data and evaluation) and the minimal action set, then gymnasium's
``AtariPreprocessing`` (4 frames per action, max-pooled over the last two; 84 x 84 grayscale;
up to 30 no-ops at reset, as the official evaluation; life loss is not an episode end) and
``FrameStackObservation`` (the last 4 frames, zeros before the first, as the DQN replay
buffer pads). An observation is (4, 84, 84) uint8; an episode ends at game over or after
ALE's 108,000 frames (27,000 steps). Every part of unicomp that makes an environment
(``unicomp.rl.envs.make_env``: collection, evaluation) makes Atari ids this way.

MinAtar (Young and Tian 2019; the ``minatar`` package): five Atari games (Asterix, Breakout,
Freeway, Seaquest, Space Invaders) on 10 x 10 grids with C boolean channels (one per kind
of object), the field's CPU-sized Atari. ``MinAtar/<Game>-v1`` (the minimal action set; -v0:
all 6 actions) is made by ``unicomp.rl.envs.make_env``: MinAtar's own environment with its defaults
(sticky actions with probability 0.1, difficulty ramping; an episode ends at game over,
Freeway after 2,500 steps), its frames turned into unicomp's image layout, (C, 10, 10) uint8
with 0 and 255, so that every image path (data sets, the DT's scaling to [0, 1], the
encoder) treats MinAtar and ALE frames alike; the information is MinAtar's, unchanged. One
frame per step, no stacking (MinAtar's frames carry motion trails). A Minari data set of
MinAtar stores these (C, 10, 10) frames; ``minari``'s own ``recover_environment`` gives the
raw (10, 10, C) booleans instead.

Scores. ``ATARI_REF_SCORES``: the random and human returns the DT paper normalises by
(100 = human, 0 = random; its table 1 calls it gamer-normalised), as listed in DeepMind's
dqn_zoo (dqn_zoo/atari_data.py, from the DQN papers: 108,000-frame episodes, up to 30
no-ops at reset). They reproduce the paper's CQL entries from the CQL paper's raw returns
(Qbert 14012 -> 104.2, Seaquest 779.4 -> 1.7). ``ATARI_TARGETS``: the official code's target
returns (atari/mingpt/trainer_atari.py). Data collected here stores the environment's own
(unclipped) rewards; the DQN replay stores clipped ones. Evaluation always scores, and
subtracts from the return-to-go, the environment's own rewards, as the official code does.
"""

from __future__ import annotations

from unicomp.errors import UnicompError

FRAME_SKIP = 4
SCREEN_SIZE = 84
FRAME_STACK = 4
NOOP_MAX = 30

# (random, human) returns: dqn_zoo/atari_data.py (github.com/google-deepmind/dqn_zoo).
ATARI_REF_SCORES: dict[str, tuple[float, float]] = {
    "breakout": (1.7, 30.5),
    "pong": (-20.7, 14.6),
    "qbert": (163.9, 13455.0),
    "seaquest": (68.4, 42054.7),
}

# The official code's evaluation targets (atari/mingpt/trainer_atari.py, get_returns).
ATARI_TARGETS: dict[str, float] = {
    "breakout": 90.0,
    "pong": 20.0,
    "qbert": 14000.0,
    "seaquest": 1150.0,
}

_INSTALL = "Atari environments need ale-py and opencv: pip install -e '.[atari]'"


# --- environments ---------------------------------------------------------------------------
MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
_MINATAR_INSTALL = "MinAtar environments need the minatar package: pip install -e '.[rl]'"


def register_minatar():
    """Register MinAtar's gymnasium ids (MinAtar registers them only when asked,
    ``minatar.gym.register_envs``) and return gymnasium; a one-line UnicompError naming the
    install where MinAtar is missing."""
    try:
        import gymnasium as gym
        import minatar.gym
    except ImportError:
        raise UnicompError(_MINATAR_INSTALL) from None
    if "MinAtar/Breakout-v1" not in gym.registry:
        minatar.gym.register_envs()
    return gym


def is_minatar(env_id: str | None) -> bool:
    return bool(env_id) and env_id.startswith("MinAtar/")


def register_ale():
    """Register ale-py's gymnasium ids (``ALE/<Game>-v5``) and return gymnasium; a one-line
    UnicompError naming the install where ale-py is missing."""
    try:
        import ale_py
        import gymnasium as gym
    except ImportError:
        raise UnicompError(_INSTALL) from None
    gym.register_envs(ale_py)
    return gym


def atari_env_id(name: str | None) -> str | None:
    """``ALE/Breakout-v5`` for "ALE/Breakout-v5", "Breakout" or "breakout" (any ALE game's
    short name); None for ids that are not Atari games (e.g. "Hopper-v5")."""
    if not name:
        return None
    if name.startswith("ALE/"):
        try:
            register_ale()  # so that gymnasium's registry knows the id
        except UnicompError:
            pass  # making the environment says what is missing
        return name
    if any(c in name for c in "-/:"):
        return None
    try:
        gym = register_ale()
    except UnicompError:
        if name.lower() in ATARI_REF_SCORES:  # a paper game: say what is missing
            raise
        return None
    for env_id in gym.registry:
        if env_id.startswith("ALE/") and env_id.endswith("-v5"):
            if env_id[4:-3].lower() == name.lower():
                return env_id
    return None


def make_atari_env(env_id: str, max_episode_steps: int | None = None, **kwargs):
    """An ALE game with the paper's preprocessing (see the module docstring): observations
    (4, 84, 84) uint8, one step = 4 frames. ``max_episode_steps`` counts these steps."""
    gym = register_ale()
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TimeLimit

    ale_id = atari_env_id(env_id) or env_id
    base = {"frameskip": 1, "repeat_action_probability": 0.0, "full_action_space": False}
    try:
        env = gym.make(ale_id, **{**base, **kwargs})
        env = AtariPreprocessing(
            env,
            noop_max=NOOP_MAX,
            frame_skip=FRAME_SKIP,
            screen_size=SCREEN_SIZE,
            terminal_on_life_loss=False,
            grayscale_obs=True,
            scale_obs=False,
        )
    except gym.error.DependencyNotInstalled:
        raise UnicompError(_INSTALL) from None
    if max_episode_steps is not None:
        env = TimeLimit(env, max_episode_steps)
    return FrameStackObservation(env, FRAME_STACK, padding_type="zero")


def game_key(env_id: str | None) -> str | None:
    """ "breakout" for "ALE/Breakout-v5" or "breakout"; None for other ids."""
    if not env_id:
        return None
    if env_id.startswith("ALE/"):
        return env_id[4:].split("-v")[0].lower()
    return env_id.lower() if env_id.lower() in ATARI_REF_SCORES else None


# --- the DQN Replay Dataset -----------------------------------------------------------------


def atari_action_count(env_id: str) -> int:
    """Actions in the game's minimal action set (what the DQN replay agents used)."""
    env = make_atari_env(env_id)
    try:
        return int(env.action_space.n)
    finally:
        env.close()


def format_ranges(numbers: list[int]) -> str:
    """ "0-3, 7" for [0, 1, 2, 3, 7] (checkpoint numbers in messages; ``parse_ranges`` reads
    them back)."""
    parts, run = [], []
    for n in sorted(numbers):
        if run and n != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(n)
    if run:
        parts.append(run)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in parts) or "none"


def parse_ranges(text: str) -> list[int]:
    """ "0-3,7" -> [0, 1, 2, 3, 7] (checkpoint numbers on the command line)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UnicompError(f"{text!r}: expected checkpoint numbers like 0-3,7") from None
    if not out:
        raise UnicompError(f"{text!r}: no checkpoint numbers")
    return out
