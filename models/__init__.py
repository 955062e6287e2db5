"""Torch models: generator and checkpoint loading, landmarks, identity, losses, inversion, reenactment.

No Prefect import anywhere under models/.
"""
