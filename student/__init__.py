"""Stage two: data streaming, student models, losses, training and evaluation."""
