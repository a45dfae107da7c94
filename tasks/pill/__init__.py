"""PILL: text-circuit matching on a frozen language model with modality adapter experts and attention gates."""
