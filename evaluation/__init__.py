"""Running and scoring any model: evaluate, predict, report, export, COCO results, OKS and PCK."""
