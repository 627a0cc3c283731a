"""multiprocessing with a function defined in the script (pickled by reference to __main__)."""
import multiprocessing as mp

import torch


def square(v):
    return v * v


if __name__ == "__main__":
    with mp.get_context("spawn").Pool(2) as pool:
        print(pool.map(square, [1, 2, 3]))
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    (w * w).sum().backward()
    print(w.grad)
