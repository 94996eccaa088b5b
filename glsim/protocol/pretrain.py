"""The ``pretrain`` stage: the backbone pretrained on the generated upstream task
(:func:`glsim.train.pretrain.pretrain`, keyed and resumable), named here for the stage
script and flows. Whether it is done: :func:`glsim.protocol.done.pretrain_done`."""

from glsim.train.pretrain import pretrain

__all__ = ["pretrain"]
