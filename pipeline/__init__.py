"""Stage one: skeletons, datasets, crop geometry, teacher runtime and the caching job."""

import cv2

# OpenCV's thread pool does not survive fork(): a forked DataLoader worker that touches it after
# the parent used it deadlocks. uni parallelises with processes (DataLoader, dask) instead.
cv2.setNumThreads(1)
