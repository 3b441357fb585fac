import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(2)

# one real SLURM cluster per test session, shared by every module that asks for it
from slurm_fixture import slurm_cluster  # noqa: E402,F401
