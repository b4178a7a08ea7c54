"""The HDF5 soft-label store written by stage one and read by stage two."""
