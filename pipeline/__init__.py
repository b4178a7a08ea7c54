"""Stage one: skeletons, datasets, crop geometry, teacher runtime and the caching job."""
