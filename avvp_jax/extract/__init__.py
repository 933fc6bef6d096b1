"""Features from a user's own videos, as the LLP release has them.

`video` decodes a clip (PyAV), `frontend` turns its audio into VGGish's log-mel examples and
its frames into network inputs, `vggish`, `resnet` and `r2plus1d` are the three networks in
Flax, `convert` reads their public PyTorch weights, and `extractor` ties them into one
jitted function per network and writes the release layout.
"""
