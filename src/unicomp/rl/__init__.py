"""Offline RL for the Decision Transformer (Chen et al. 2021, arXiv 2106.01345).

trajectories.py  one in-memory format for trajectory data sets: episodes, statistics,
                 checks, the %BC and delayed-reward selections
d4rl_io.py       the D4RL HDF5 reader
minari_io.py     the Minari readers (folder, id) and writer, the ids of the data sets we write
datasets.py      a data set by its name (D4RL file, Minari folder or id; several combined)
collect.py       roll out trained agents (Stable-Baselines3), random or noisy policies in
                 vectorised gymnasium environments; D4RL-like suites (random ... medium-expert)
collect_options.py  dt collect's options: which combinations go together, what each runs
evaluate.py      vectorised evaluation with seeds, D4RL normalised score, the DT as an agent
dt_task.py       the training task: (R, s, a) windows for the one training loop
envs.py          Key-to-Door and shortest paths on a random graph, as gymnasium environments

This package needs the ``rl`` extra (gymnasium[mujoco], stable-baselines3, sb3-contrib,
minari, h5py). Its modules import those lazily where they can, so that the rest of unicomp
works without them.
"""
