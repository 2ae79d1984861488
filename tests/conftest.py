"""Test-session settings: one torch thread (CI and dev machines have 2 shared cores; worker threads
fighting over them triple wall time without making anything more correct)."""

import torch

torch.set_num_threads(1)
