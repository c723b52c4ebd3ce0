"""Data formats: image decoding and normalisation, boxes through resizes and crops, the CUB and ImageNet
readers, PASCAL-VOC files, and the up-front setup checks. No Lightning here."""
