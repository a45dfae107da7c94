"""Domain shift on the shared expert core: MixDA, Meta-DMoE, global/local expert gating."""
