"""``python -m dspex_worker``: run one worker on the descriptors in the environment."""

from .server import main

main()
