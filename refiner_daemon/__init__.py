"""The GPU refinement daemon: GAN refiners, training loops, the inference service and server,
the head detector and the evaluation tools. Everything that imports torch lives here."""
