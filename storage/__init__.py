"""Storage: the zarr cache, video I/O, manifests, provenance and weight files. No torch models here."""
