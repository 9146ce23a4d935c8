"""Small stand-ins shared by several test files."""

import torch


class CountingPolicy(torch.nn.Module):
    """A deterministic stand-in velocity field that counts the rows it computes (forwards)."""

    latent_shape = (3, 2, 4, 4)

    def __init__(self):
        super().__init__()
        self.rows = 0

    def velocity(self, x, sigma, emb, null_emb, guidance):
        self.rows += len(x)
        return torch.tanh(x * 0.5 + emb.mean((1, 2)).view(-1, 1, 1, 1, 1) + sigma.view(-1, 1, 1, 1, 1))
