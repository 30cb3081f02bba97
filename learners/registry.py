"""The component registries of the learner side."""
from tasks.registry import Registry

LEARNERS: Registry = Registry("learner")
FUSIONS: Registry = Registry("fusion")
BACKBONES: Registry = Registry("backbone")
TEXT_ENCODERS: Registry = Registry("text_encoder")
