"""Shared test setup: one torch thread per xdist worker and a fixed seed for every test."""

import os
import random

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the machine's few cores; more threads per worker only oversubscribe them.
    torch.set_num_threads(1)

SEED = 0


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed torch, numpy and random before each test; returns the seed."""
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    random.seed(SEED)
    return SEED
