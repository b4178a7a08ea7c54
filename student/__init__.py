"""Stage two: data streaming, augmentation, student models, losses, configuration and the loop."""
