"""One torch thread: the CI box's few cores are shared, and these models are tiny."""

import torch

torch.set_num_threads(1)
