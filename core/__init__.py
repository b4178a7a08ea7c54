"""The foundation every layer uses: errors, files, skeletons, geometry, heatmaps, crops and the
dataset readers."""
