"""The notebooks run as tests (nbmake). Their training cells take NOTEBOOK_TRAIN_SECONDS when it is set: the
suite sets it low, so the notebooks check that every cell runs, not how far a longer run gets."""

import os

os.environ.setdefault("NOTEBOOK_TRAIN_SECONDS", "12")
